"""A local stand-in for ModelArts and IAM, plus fake inference instances (see app.py and admin.py)."""

from modelarts_emulator.app import Emulator, EmulatorError
from modelarts_emulator.client import EmulatorAdmin, EmulatorAdminError
from modelarts_emulator.config import EmulatorConfig, ScenarioError, ServiceConfig

__all__ = [
    "Emulator",
    "EmulatorAdmin",
    "EmulatorAdminError",
    "EmulatorConfig",
    "EmulatorError",
    "ScenarioError",
    "ServiceConfig",
]
