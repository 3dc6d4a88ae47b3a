"""faceledger: accountable face search over lawfully sourced galleries."""

__version__ = "0.1.0"
