"""Run the chart's Argo CD health check the way Argo CD does: Lua 5.1 (Argo CD embeds gopher-lua, a Lua 5.1),
the object as the global `obj` decoded from JSON, only the base, string, table and math libraries, and the
script's return value as the health."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lupa import lua51

from tests.chart.helmtool import CHART

HEALTH_LUA = CHART / "files" / "argocd-health.lua"

_SANDBOX = """
function(code, obj)
  local env = {
    obj = obj, ipairs = ipairs, pairs = pairs, next = next, select = select, type = type,
    tostring = tostring, tonumber = tonumber, error = error, pcall = pcall, assert = assert,
    unpack = unpack, string = string, table = table, math = math,
  }
  local fn = assert(loadstring(code, "argocd-health.lua"))
  setfenv(fn, env)
  return fn()
end
"""


def argocd_health(obj: dict[str, Any], script: Path = HEALTH_LUA) -> dict[str, str]:
    """{'status': Healthy|Progressing|Degraded|..., 'message': ...} for one TRTModel as the API returns it."""
    lua = lua51.LuaRuntime()
    # Through JSON first, as Argo CD sees it: timestamps become strings, no Python-only types survive.
    decoded = json.loads(json.dumps(obj, default=str))
    health = lua.eval(_SANDBOX)(script.read_text(), lua.table_from(decoded, recursive=True))
    assert health is not None, "the health script returned nothing"
    return {"status": str(health["status"]), "message": str(health["message"] or "")}
