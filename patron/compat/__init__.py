"""Adapters around private APIs of dependencies: each checks the installed version at import."""
