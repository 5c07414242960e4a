"""Safety limits, validated when a bench is configured and enforced again in the drivers
before any command leaves the host."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from .errors import LimitError


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_line_voltage: float = Field(3.0, gt=0, le=100, description="|V| any source may put on a line")
    max_device_voltage: float = Field(2.5, gt=0, le=100, description="|V| across any device")
    compliance_current: float = Field(10e-3, gt=0, le=0.1, description="largest current compliance (A)")
    max_pulse_width: float = Field(10e-3, gt=0, description="longest pulse (s)")
    # 100 uJ admits the default tuning ramps (up to 1.8 V at 10 mA for 1 ms: 18 uJ) with room
    max_pulse_energy: float = Field(1e-4, gt=0, description="|V| x compliance x width, worst case (J)")

    def check_line_voltage(self, volts: float, where: str = "") -> None:
        if not abs(volts) <= self.max_line_voltage:
            raise LimitError(f"{where}{volts:+.4g} V exceeds max_line_voltage {self.max_line_voltage} V")

    def check_device_voltage(self, volts: float, where: str = "") -> None:
        if not abs(volts) <= self.max_device_voltage:
            raise LimitError(f"{where}{volts:+.4g} V across a device exceeds max_device_voltage "
                             f"{self.max_device_voltage} V")

    def check_compliance(self, amps: float, where: str = "") -> None:
        if not 0 < amps <= self.compliance_current:
            raise LimitError(f"{where}compliance {amps:.4g} A outside (0, {self.compliance_current}] A")

    def check_pulse(self, peak: float, width: float, compliance: float, where: str = "") -> None:
        self.check_line_voltage(peak, where)
        self.check_compliance(compliance, where)
        if not 0 < width <= self.max_pulse_width:
            raise LimitError(f"{where}pulse width {width:.4g} s outside (0, {self.max_pulse_width}] s")
        energy = abs(peak) * compliance * width
        if energy > self.max_pulse_energy:
            raise LimitError(f"{where}pulse energy bound {energy:.3g} J exceeds max_pulse_energy "
                             f"{self.max_pulse_energy} J")
