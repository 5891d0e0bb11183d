-- wrk script: bench/mcp.lua's requests, each connection pausing a fixed time after every
-- answer, so that two scenarios can be compared at (nearly) the same request rate.
--
-- A service's CPU per check falls as its request rate rises (more checks share each
-- event-loop turn and each Redis call), so what tracing adds is only its own cost when the
-- traced and the untraced rows run at one rate. With c connections and a pause of P ms the
-- rate is c / (P + latency): bench/run.py sets P for a rate both rows can sustain.
--
--   wrk -t1 -c16 -d3s -s bench/paced.lua URL -- IDENTITIES TOOL PATH PREFIX TRACED PAUSE_MS

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "mcp.lua")

local pause = 0
local requests_init = init

function init(args)
  pause = tonumber(args[6] or "0")
  requests_init(args)
end

function delay()
  return pause
end
