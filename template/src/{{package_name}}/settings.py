"""This service's settings: every knob of the template's machinery, plus your own.

A field added here is read from the environment variable of the same name in upper case, and
validated at start-up (a bad value stops the service, naming the variable).
"""

from typing import Annotated

from fastapi import Depends

from .runtime import ServiceSettings, settings_dependency


class Settings(ServiceSettings):
    """Add your own settings below, e.g. `feature_x_enabled: bool = False`."""


# What routes take to read the settings, yours included: `settings: SettingsDep`.
SettingsDep = Annotated[Settings, Depends(settings_dependency(Settings))]
