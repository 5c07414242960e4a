"""The Keysight B1530A WGFMU instrument library (wgfmu.dll, `wgfmu.h`) through ctypes.

The constants and prototypes below are transcribed from the library's header (`wgfmu.h`,
"B1530A (WGFMU) Instrument Library API and Constant Definitions", 10-30-2008). Every
function returns an int error code (0 = WGFMU_NO_ERROR); results come back through
pointer arguments. The header declares the functions `_stdcall`: on Windows the DLL is
loaded with `WinDLL`; elsewhere (a port, or a test double) with `CDLL`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from ctypes import POINTER, c_char, c_char_p, c_double, c_int

from .errors import DriverError

LIBRARY_ENV = "MEMLAB_WGFMU_LIBRARY"

# --- API return values: error codes --------------------------------------------------------
NO_ERROR = 0
PARAMETER_OUT_OF_RANGE_ERROR = -1
ILLEGAL_STRING_ERROR = -2
CONTEXT_ERROR = -3
FUNCTION_NOT_SUPPORTED_ERROR = -4
COMMUNICATION_ERROR = -5
FW_ERROR = -6
LIBRARY_ERROR = -7
ERROR = -8
CHANNEL_NOT_FOUND_ERROR = -9
PATTERN_NOT_FOUND_ERROR = -10
EVENT_NOT_FOUND_ERROR = -11
PATTERN_ALREADY_EXISTS_ERROR = -12
SEQUENCER_NOT_RUNNING_ERROR = -13
RESULT_NOT_READY_ERROR = -14
RESULT_OUT_OF_DATE = -15
ERROR_CODE_MIN = -9999

ERROR_NAMES = {
    0: "WGFMU_NO_ERROR", -1: "WGFMU_PARAMETER_OUT_OF_RANGE_ERROR", -2: "WGFMU_ILLEGAL_STRING_ERROR",
    -3: "WGFMU_CONTEXT_ERROR", -4: "WGFMU_FUNCTION_NOT_SUPPORTED_ERROR", -5: "WGFMU_COMMUNICATION_ERROR",
    -6: "WGFMU_FW_ERROR", -7: "WGFMU_LIBRARY_ERROR", -8: "WGFMU_ERROR", -9: "WGFMU_CHANNEL_NOT_FOUND_ERROR",
    -10: "WGFMU_PATTERN_NOT_FOUND_ERROR", -11: "WGFMU_EVENT_NOT_FOUND_ERROR",
    -12: "WGFMU_PATTERN_ALREADY_EXISTS_ERROR", -13: "WGFMU_SEQUENCER_NOT_RUNNING_ERROR",
    -14: "WGFMU_RESULT_NOT_READY_ERROR", -15: "WGFMU_RESULT_OUT_OF_DATE",
}

# WGFMU_doSelfCaliration, WGFMU_doSelfTest
PASS, FAIL = 0, 1
# WGFMU_treatWarningsAsErrors, WGFMU_setWarningLevel
WARNING_LEVEL_OFF, WARNING_LEVEL_SEVERE, WARNING_LEVEL_NORMAL, WARNING_LEVEL_INFORMATION = 1000, 1001, 1002, 1003
# WGFMU_setOperationMode
OPERATION_MODE_DC, OPERATION_MODE_FASTIV, OPERATION_MODE_PG, OPERATION_MODE_SMU = 2000, 2001, 2002, 2003
# WGFMU_setForceVoltageRange
FORCE_VOLTAGE_RANGE_AUTO = 3000
FORCE_VOLTAGE_RANGE_3V = 3001
FORCE_VOLTAGE_RANGE_5V = 3002
FORCE_VOLTAGE_RANGE_10V_NEGATIVE = 3003
FORCE_VOLTAGE_RANGE_10V_POSITIVE = 3004
# WGFMU_setMeasureMode
MEASURE_MODE_VOLTAGE, MEASURE_MODE_CURRENT = 4000, 4001
# WGFMU_setMeasureVoltageRange
MEASURE_VOLTAGE_RANGE_5V, MEASURE_VOLTAGE_RANGE_10V = 5001, 5002
# WGFMU_setMeasureCurrentRange
MEASURE_CURRENT_RANGE_1UA = 6001
MEASURE_CURRENT_RANGE_10UA = 6002
MEASURE_CURRENT_RANGE_100UA = 6003
MEASURE_CURRENT_RANGE_1MA = 6004
MEASURE_CURRENT_RANGE_10MA = 6005
CURRENT_RANGES = {6001: 1e-6, 6002: 1e-5, 6003: 1e-4, 6004: 1e-3, 6005: 1e-2}   # code -> A
# WGFMU_setMeasureEnabled
MEASURE_ENABLED_DISABLE, MEASURE_ENABLED_ENABLE = 7000, 7001
# WGFMU_setTriggerOutMode
TRIGGER_OUT_MODE_DISABLE = 8000
TRIGGER_OUT_MODE_START_EXECUTION = 8001
TRIGGER_OUT_MODE_START_SEQUENCE = 8002
TRIGGER_OUT_MODE_START_PATTERN = 8003
TRIGGER_OUT_MODE_EVENT = 8004
TRIGGER_OUT_POLARITY_POSITIVE, TRIGGER_OUT_POLARITY_NEGATIVE = 8100, 8101
# WGFMU_createMergedPattern
AXIS_TIME, AXIS_VOLTAGE = 9000, 9001
# WGFMU_getStatus, WGFMU_getChannelStatus
STATUS_COMPLETED = 10000
STATUS_DONE = 10001
STATUS_RUNNING = 10002
STATUS_ABORT_COMPLETED = 10003
STATUS_ABORTED = 10004
STATUS_RUNNING_ILLEGAL = 10005
STATUS_IDLE = 10006
STATUS_NAMES = {10000: "COMPLETED", 10001: "DONE", 10002: "RUNNING", 10003: "ABORT_COMPLETED",
                10004: "ABORTED", 10005: "RUNNING_ILLEGAL", 10006: "IDLE"}
# WGFMU_isMeasureEventCompleted
MEASURE_EVENT_NOT_COMPLETED, MEASURE_EVENT_COMPLETED = 11000, 11001
# WGFMU_setMeasureEvent
MEASURE_EVENT_DATA_AVERAGED, MEASURE_EVENT_DATA_RAW = 12000, 12001

# --- prototypes --------------------------------------------------------------------------------
_I, _D, _S = c_int, c_double, c_char_p          # int, double, const char*
_PI, _PD = POINTER(c_int), POINTER(c_double)     # int*, double*
_BUF = POINTER(c_char)                           # char* (a buffer the library writes)
_PS = POINTER(c_char_p)                          # const char** / char**

# name -> argument types, in the header's order; every function returns int
SIGNATURES: dict[str, tuple] = {
    # Common - Initialize
    "WGFMU_openSession": (_S,),
    "WGFMU_closeSession": (),
    "WGFMU_initialize": (),
    "WGFMU_setTimeout": (_D,),
    "WGFMU_doSelfCalibration": (_PI, _BUF, _PI),
    "WGFMU_doSelfTest": (_PI, _BUF, _PI),
    "WGFMU_getChannelIdSize": (_PI,),
    "WGFMU_getChannelIds": (_PI, _PI),
    # Common - Error and Warning
    "WGFMU_getErrorSize": (_PI,),
    "WGFMU_getError": (_BUF, _PI),
    "WGFMU_getErrorSummarySize": (_PI,),
    "WGFMU_getErrorSummary": (_BUF, _PI),
    "WGFMU_treatWarningsAsErrors": (_I,),
    "WGFMU_setWarningLevel": (_I,),
    "WGFMU_getWarningLevel": (_PI,),
    "WGFMU_getWarningSummarySize": (_PI,),
    "WGFMU_getWarningSummary": (_BUF, _PI),
    "WGFMU_openLogFile": (_S,),
    "WGFMU_closeLogFile": (),
    # Common - Setup
    "WGFMU_setOperationMode": (_I, _I),
    "WGFMU_getOperationMode": (_I, _PI),
    "WGFMU_setForceVoltageRange": (_I, _I),
    "WGFMU_getForceVoltageRange": (_I, _PI),
    "WGFMU_setMeasureMode": (_I, _I),
    "WGFMU_getMeasureMode": (_I, _PI),
    "WGFMU_setMeasureVoltageRange": (_I, _I),
    "WGFMU_getMeasureVoltageRange": (_I, _PI),
    "WGFMU_setMeasureCurrentRange": (_I, _I),
    "WGFMU_getMeasureCurrentRange": (_I, _PI),
    "WGFMU_setForceDelay": (_I, _D),
    "WGFMU_getForceDelay": (_I, _PD),
    "WGFMU_setMeasureDelay": (_I, _D),
    "WGFMU_getMeasureDelay": (_I, _PD),
    "WGFMU_setMeasureEnabled": (_I, _I),
    "WGFMU_isMeasureEnabled": (_I, _PI),
    "WGFMU_setTriggerOutMode": (_I, _I, _I),
    "WGFMU_getTriggerOutMode": (_I, _PI, _PI),
    # Common - Measurement
    "WGFMU_connect": (_I,),
    "WGFMU_disconnect": (_I,),
    # WGFMU - Initialize
    "WGFMU_clear": (),
    # WGFMU - Setup - Pattern
    "WGFMU_createPattern": (_S, _D),
    "WGFMU_addVector": (_S, _D, _D),
    "WGFMU_addVectors": (_S, _PD, _PD, _I),
    "WGFMU_setVector": (_S, _D, _D),
    "WGFMU_setVectors": (_S, _PD, _PD, _I),
    # WGFMU - Setup - Pattern Operation
    "WGFMU_createMergedPattern": (_S, _S, _S, _I),
    "WGFMU_createMultipliedPattern": (_S, _S, _D, _D),
    "WGFMU_createOffsetPattern": (_S, _S, _D, _D),
    # WGFMU - Setup - Event
    "WGFMU_setMeasureEvent": (_S, _S, _D, _I, _D, _D, _I),
    "WGFMU_setRangeEvent": (_S, _S, _D, _I),
    "WGFMU_setTriggerOutEvent": (_S, _S, _D, _D),
    # WGFMU - Setup - Sequence
    "WGFMU_addSequence": (_I, _S, _D),
    "WGFMU_addSequences": (_I, _PS, _PD, _I),
    # WGFMU - Setup Check - Pattern
    "WGFMU_getPatternForceValueSize": (_S, _PI),
    "WGFMU_getPatternForceValues": (_S, _I, _PI, _PD, _PD),
    "WGFMU_getPatternForceValue": (_S, _I, _PD, _PD),
    "WGFMU_getPatternInterpolatedForceValue": (_S, _D, _PD),
    "WGFMU_getPatternMeasureTimeSize": (_S, _PI),
    "WGFMU_getPatternMeasureTimes": (_S, _I, _PI, _PD),
    "WGFMU_getPatternMeasureTime": (_S, _I, _PD),
    # WGFMU - Setup Check - Sequence (the header passes sizes and indices as double here)
    "WGFMU_getForceValueSize": (_I, _PD),
    "WGFMU_getForceValues": (_I, _D, _PI, _PD, _PD),
    "WGFMU_getForceValue": (_I, _D, _PD, _PD),
    "WGFMU_getInterpolatedForceValue": (_I, _D, _PD),
    "WGFMU_getMeasureTimeSize": (_I, _PI),
    "WGFMU_getMeasureTimes": (_I, _I, _PI, _PD),
    "WGFMU_getMeasureTime": (_I, _I, _PD),
    # WGFMU - Setup Check - Event
    "WGFMU_getMeasureEventSize": (_I, _PI),
    "WGFMU_getMeasureEvents": (_I, _I, _PI, _PS, _PS, _PI, _PD, _PI, _PI, _PI),
    "WGFMU_getMeasureEvent": (_I, _I, _BUF, _BUF, _PI, _PD, _PI, _PI, _PI),
    "WGFMU_getMeasureEventAttribute": (_I, _I, _PD, _PI, _PD, _PD, _PI),
    # WGFMU - Import / Export
    "WGFMU_exportAscii": (_S,),
    # WGFMU - Measurement
    "WGFMU_update": (),
    "WGFMU_updateChannel": (_I,),
    "WGFMU_execute": (),
    "WGFMU_abort": (),
    "WGFMU_abortChannel": (_I,),
    "WGFMU_getStatus": (_PI, _PD, _PD),
    "WGFMU_getChannelStatus": (_I, _PI, _PD, _PD),
    "WGFMU_waitUntilCompleted": (),
    # WGFMU - Data Retrieve - Measure Value
    "WGFMU_getMeasureValueSize": (_I, _PI, _PI),
    "WGFMU_getMeasureValues": (_I, _I, _PI, _PD, _PD),
    "WGFMU_getMeasureValue": (_I, _I, _PD, _PD),
    # WGFMU - Data Retrieve - Measure Event
    "WGFMU_getCompletedMeasureEventSize": (_I, _PI, _PI),
    "WGFMU_isMeasureEventCompleted": (_I, _S, _S, _I, _D, _I, _PI, _PI, _PI, _PI),
    # DC - Measure
    "WGFMU_dcforceVoltage": (_I, _D),
    "WGFMU_dcmeasureValue": (_I, _PD),
    "WGFMU_dcmeasureAveragedValue": (_I, _I, _I, _PD),
}
RESTYPE = c_int

# what the driver calls: a library lacking one of these is not one it can drive
REQUIRED = ("WGFMU_openSession", "WGFMU_closeSession", "WGFMU_initialize", "WGFMU_clear",
            "WGFMU_setOperationMode", "WGFMU_setForceVoltageRange", "WGFMU_setMeasureMode",
            "WGFMU_setMeasureCurrentRange", "WGFMU_connect", "WGFMU_disconnect", "WGFMU_createPattern",
            "WGFMU_addVectors", "WGFMU_setMeasureEvent", "WGFMU_addSequence", "WGFMU_execute",
            "WGFMU_waitUntilCompleted", "WGFMU_getStatus", "WGFMU_getMeasureValueSize",
            "WGFMU_getMeasureValues", "WGFMU_getErrorSummarySize", "WGFMU_getErrorSummary",
            "WGFMU_abort", "WGFMU_dcforceVoltage")


class LibraryNotFound(DriverError, OSError):
    """The WGFMU instrument library could not be loaded (or is not the WGFMU library)."""


def bind(lib) -> None:
    """Set argtypes and restype of every header function the loaded library exports."""
    missing = [name for name in REQUIRED if not hasattr(lib, name)]
    if missing:
        raise LibraryNotFound(f"{getattr(lib, '_name', lib)!s} is not the WGFMU instrument library: it lacks "
                              f"{', '.join(missing)}")
    for name, argtypes in SIGNATURES.items():
        fn = getattr(lib, name, None)
        if fn is not None:
            fn.argtypes = list(argtypes)
            fn.restype = RESTYPE


def candidates(path: str | os.PathLike | None = None) -> list[str]:
    """Where the library is looked for, in order: the argument, else $MEMLAB_WGFMU_LIBRARY,
    else the system's library search (wgfmu.dll is installed into the Windows system folder)."""
    if path is not None:
        return [os.fspath(path)]
    if os.environ.get(LIBRARY_ENV):
        return [os.environ[LIBRARY_ENV]]
    if sys.platform == "win32":
        return ["wgfmu.dll"]
    found = ctypes.util.find_library("wgfmu")
    return [found] if found else ["libwgfmu.so"]


def load_library(path: str | os.PathLike | None = None):
    """The vendor library via ctypes, its functions typed from the header."""
    loader = ctypes.WinDLL if sys.platform == "win32" else ctypes.CDLL
    tried = []
    for candidate in candidates(path):
        try:
            lib = loader(candidate)
        except OSError as exc:
            tried.append(f"{candidate!r} ({exc})")
            continue
        bind(lib)
        return lib
    raise LibraryNotFound(f"the Keysight WGFMU instrument library could not be loaded: tried "
                          f"{'; '.join(tried)}. Install the B1530A instrument library, or give its path "
                          f"(load_library(path) or ${LIBRARY_ENV}).")
