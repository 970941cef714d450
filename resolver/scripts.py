"""Lua sources, read once at import so reviewers see them as plain .lua files."""

from __future__ import annotations

from importlib.resources import files

__all__ = [
    "AUDIT_LUA",
    "CHECKS_LUA",
    "FORGET_LUA",
    "LINK_LUA",
    "LINK_RULES_LUA",
    "QUARANTINE_LUA",
    "UNLINK_LUA",
    "load_lua",
]


def load_lua(package: str, name: str) -> str:
    return (files(package) / "lua" / name).read_text(encoding="utf-8")


CHECKS_LUA = load_lua("resolver", "checks.lua")
LINK_RULES_LUA = CHECKS_LUA + load_lua("resolver", "link_rules.lua")
LINK_LUA = LINK_RULES_LUA + load_lua("resolver", "link.lua")
_REMOVAL = LINK_RULES_LUA + load_lua("resolver", "removal_checks.lua")
_UNLINKING = _REMOVAL + load_lua("resolver", "unlinking.lua")
UNLINK_LUA = _UNLINKING + load_lua("resolver", "unlink.lua")
AUDIT_LUA = _UNLINKING + load_lua("resolver", "audit.lua")
FORGET_LUA = _REMOVAL + load_lua("resolver", "forget.lua")
QUARANTINE_LUA = _REMOVAL + load_lua("resolver", "quarantine.lua")
