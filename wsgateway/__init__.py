"""wsgateway: a real-time WebSocket gateway for market data.

The public API::

    from wsgateway import create_app, get_gateway, load_settings, Settings
    app = create_app(Settings(port=9000))
    await get_gateway(app).publish("ticker", "BTC-USD", {"price": 65000})
"""

from __future__ import annotations

__version__ = "0.1.0"

from .app import create_app, get_gateway
from .errors import (
    ClientError,
    CloseConnection,
    GatewayError,
    PublishError,
    Rejected,
    SettingsError,
)
from .gateway import Gateway
from .settings import Limits, Settings, load_settings

__all__ = [
    "ClientError",
    "CloseConnection",
    "Gateway",
    "GatewayError",
    "Limits",
    "PublishError",
    "Rejected",
    "Settings",
    "SettingsError",
    "__version__",
    "create_app",
    "get_gateway",
    "load_settings",
]
