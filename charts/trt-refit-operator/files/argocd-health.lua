-- Argo CD health check for trtrefit.dev/TRTModel (resource.customizations.health.trtrefit.dev_TRTModel).
-- Follows kstatus, the rules the operator's status is written to (docs/gitops.md):
--   not yet observed / observedGeneration behind metadata.generation -> Progressing
--   Stalled=True (verification failed, bad artifact: needs a human)  -> Degraded
--   Ready=True (serving pods run the engine of spec.checkpoint)       -> Healthy
--   Reconciling=True or anything else                                 -> Progressing
-- Plain Lua 5.1 with no library beyond the base functions, as Argo CD's sandbox allows.

local function condition(status, kind)
  if status == nil or status.conditions == nil then
    return nil
  end
  for _, c in ipairs(status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local function describe(c, fallback)
  if c == nil then
    return fallback
  end
  local text = c.message
  if text == nil or text == "" then
    text = c.reason or fallback
  end
  return text
end

local hs = {}
local status = obj.status
local generation = obj.metadata.generation

if obj.metadata.deletionTimestamp ~= nil then
  hs.status = "Progressing"
  hs.message = "TRTModel is being deleted"
  return hs
end

if status == nil or status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe this TRTModel"
  return hs
end

if generation ~= nil and status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = "Waiting for the operator to observe generation " .. tostring(generation)
    .. " (it has seen " .. tostring(status.observedGeneration) .. ")"
  return hs
end

local stalled = condition(status, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = describe(stalled, "Stalled")
  return hs
end

local ready = condition(status, "Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = describe(ready, "Ready")
  return hs
end

local reconciling = condition(status, "Reconciling")
if reconciling ~= nil and reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = describe(reconciling, "Reconciling")
  return hs
end

-- Not Ready, not Stalled, nothing in flight: the phase says why (Failed without Stalled means the
-- operator will retry on its own, so it is still progress).
hs.status = "Progressing"
hs.message = describe(ready, "Phase " .. tostring(status.phase or "unknown"))
return hs
