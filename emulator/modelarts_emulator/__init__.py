"""A local stand-in for ModelArts and IAM, plus fake inference instances (see app.py and admin.py)."""

from agent.emulator.app import Emulator, EmulatorError
from agent.emulator.client import EmulatorAdmin, EmulatorAdminError
from agent.emulator.config import EmulatorConfig, ScenarioError, ServiceConfig

__all__ = [
    "Emulator",
    "EmulatorAdmin",
    "EmulatorAdminError",
    "EmulatorConfig",
    "EmulatorError",
    "ScenarioError",
    "ServiceConfig",
]
