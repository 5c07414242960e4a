"""Training that survives real devices: noise injection, hardware-aware ex-situ training and
transfer, in-the-loop training with fault estimation and pruning."""
