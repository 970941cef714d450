"""Lua sources, read once at import so reviewers see them as plain .lua files."""

from __future__ import annotations

from importlib.resources import files

__all__ = ["LINK_LUA", "LINK_RULES_LUA", "load_lua"]


def load_lua(package: str, name: str) -> str:
    return (files(package) / "lua" / name).read_text(encoding="utf-8")


LINK_RULES_LUA = load_lua("resolver", "link_rules.lua")
LINK_LUA = LINK_RULES_LUA + load_lua("resolver", "link.lua")
