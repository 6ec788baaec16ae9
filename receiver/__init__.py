"""Payment-notification receiver for GoPay and Baofoo."""

__version__ = "0.1.0"
