"""``Ledger`` on Redis: ownership, quota counters, reservations and the rate limit shared by every
server process on every host that points at the same Redis (``CONTAINER_MCP_STATE_URL``).

Every transaction is one Lua script, which Redis runs atomically: the check and the update of a
quota cannot interleave with another process's, wherever it runs. Keys (all under ``cmcp:``):

=================================  ======  ==================================================
key                                type    holds
=================================  ======  ==================================================
``cmcp:key``                       string  the HMAC secret session keys are hashed with (made
                                           once, by whichever process opens the ledger first)
``cmcp:c:<container>``             hash    owner digest, name, created_at, state, files, bytes,
                                           meta (the container as last seen)
``cmcp:o:<owner>:all``             zset    the owner's containers, scored by created_at (ties
                                           in id order: Redis orders equal scores by member)
``cmcp:o:<owner>:n:<name>``        zset    the same, by name (``container_list``'s filter)
``cmcp:o:<owner>:live``            zset    the owner's live containers, by created_at: what
                                           the quotas and the file views walk, at most the
                                           container limit whatever the number expired
``cmcp:o:<owner>:pending``         zset    reservations, scored by when they were made
``cmcp:r:<reservation>``           hash    a reservation's owner and name (expires with it)
``cmcp:f:<container>``             zset    the container's file ids (score 0: in id order)
``cmcp:fm:<container>``            hash    file id -> the file as last seen (JSON)
``cmcp:fi:<container>``            hash    file id -> path
``cmcp:fp:<container>``            hash    path -> file id
``cmcp:calls:<owner>:<minute>``    string  calls in one fixed minute (expires after two)
``cmcp:t:<token>``                 string  a charge made (or taken back) under a one-off token,
                                           or a reservation cancelled, for a minute (see
                                           ``RedisLedger.charge``)
``cmcp:totals``                    hash    live containers, files and bytes of every owner
=================================  ======  ==================================================

The scripts name keys they derive from their arguments, so the ledger needs one Redis (a primary,
with replicas if wanted), not a Redis Cluster. Connection failures and timeouts raise
``StateUnavailable``; the client never retries a script on its own (a script that ran but whose
reply was lost would be applied twice). A transaction is never cancelled halfway (see ``base``).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal, TypeVar, cast

import anyio
import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ..errors import Hint, InvalidRequest, StateUnavailable
from ..models import ContainerFile
from .base import (
    PENDING_TTL_S,
    FileCursor,
    Limits,
    OwnedContainer,
    Usage,
    over_bytes,
    over_containers,
    over_files,
    rate_limited,
    session_digest,
)

__all__ = ["RedisLedger"]

_T = TypeVar("_T")

log = logging.getLogger(__name__)

_TIMEOUT_S = 5.0
"""Connect and reply timeout: a Redis that does not answer within it counts as unavailable."""

_MARK_S = 60
"""How long a charge's token is kept: far longer than a script sent before a lost reply can take
to run, so taking a charge back and the charge itself meet in either order."""

_KEY = "cmcp:key"

_SAME_KEY = """
-- ARGV[1] is the SHA-1 of the secret this process hashes session keys with. Another secret (or
-- none: the database was flushed) means its digests name nobody here: refuse, changing nothing.
if redis.sha1hex(redis.call('GET', 'cmcp:key') or '') ~= table.remove(ARGV, 1) then
  return redis.error_reply('CMCPKEY the session-key secret changed')
end
"""
_KEY_CHANGED = "CMCPKEY"

_HELPERS = """
local function ok(k) return 'cmcp:o:' .. k end
local function adjust(cid, files, bytes)
  -- add (files, bytes) to a live container, flooring at 0; keep the totals equal to the sum
  local cur = redis.call('HMGET', 'cmcp:c:' .. cid, 'files', 'bytes')
  -- (Lua's -0 would reach Redis as the string "-0", which HINCRBY refuses: keep every zero +0)
  local f = math.max(tonumber(cur[1]) + files, 0) + 0
  local b = math.max(tonumber(cur[2]) + bytes, 0) + 0
  if f == 0 then f = 0 end
  if b == 0 then b = 0 end
  redis.call('HSET', 'cmcp:c:' .. cid, 'files', f, 'bytes', b)
  redis.call('HINCRBY', 'cmcp:totals', 'files', f - tonumber(cur[1]))
  redis.call('HINCRBY', 'cmcp:totals', 'bytes', b - tonumber(cur[2]))
end
local function drop_live(cid, owner)
  -- the container stops counting: out of the live set and the totals
  if redis.call('ZREM', ok(owner) .. ':live', cid) == 1 then
    local cur = redis.call('HMGET', 'cmcp:c:' .. cid, 'files', 'bytes')
    redis.call('HINCRBY', 'cmcp:totals', 'containers', -1)
    redis.call('HINCRBY', 'cmcp:totals', 'files', 0 - tonumber(cur[1]))
    redis.call('HINCRBY', 'cmcp:totals', 'bytes', 0 - tonumber(cur[2]))
  end
end
local function drop_index(cid)
  redis.call('DEL', 'cmcp:f:' .. cid, 'cmcp:fm:' .. cid, 'cmcp:fi:' .. cid, 'cmcp:fp:' .. cid)
end
local function unindex(cid, id)
  local path = redis.call('HGET', 'cmcp:fi:' .. cid, id)
  if path then redis.call('HDEL', 'cmcp:fp:' .. cid, path) end
  redis.call('ZREM', 'cmcp:f:' .. cid, id)
  redis.call('HDEL', 'cmcp:fm:' .. cid, id)
  redis.call('HDEL', 'cmcp:fi:' .. cid, id)
end
local function index(cid, id, path, meta)
  local old = redis.call('HGET', 'cmcp:fp:' .. cid, path)
  if old then unindex(cid, old) end
  unindex(cid, id)
  redis.call('ZADD', 'cmcp:f:' .. cid, 0, id)
  redis.call('HSET', 'cmcp:fm:' .. cid, id, meta)
  redis.call('HSET', 'cmcp:fi:' .. cid, id, path)
  redis.call('HSET', 'cmcp:fp:' .. cid, path, id)
end
local function stored_bytes(owner)
  local used = 0
  for _, id in ipairs(redis.call('ZRANGE', ok(owner) .. ':live', 0, -1)) do
    used = used + tonumber(redis.call('HGET', 'cmcp:c:' .. id, 'bytes') or '0')
  end
  return used
end
"""

# ARGV: owner, name, now, ttl, max, reservation. Returns {1, used} or {0, used}.
_RESERVE = """
local owner, name, now, ttl, max, res = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]),
  tonumber(ARGV[5]), ARGV[6]
local pending = ok(owner) .. ':pending'
if redis.call('EXISTS', 'cmcp:t:' .. res) == 1 then return {0, 0} end  -- cancelled before it came
redis.call('ZREMRANGEBYSCORE', pending, '-inf', now - ttl)
local used = redis.call('ZCARD', ok(owner) .. ':live') + redis.call('ZCARD', pending)
if used >= max then return {0, used} end
redis.call('ZADD', pending, now, res)
redis.call('HSET', 'cmcp:r:' .. res, 'owner', owner, 'name', name)
redis.call('PEXPIRE', 'cmcp:r:' .. res, math.floor(ttl * 1000))
return {1, used}
"""

# ARGV: reservation, container id, created_at, meta. Returns 1, or 0 when the reservation lapsed.
_COMMIT = """
local res, cid, created, meta = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local r = redis.call('HMGET', 'cmcp:r:' .. res, 'owner', 'name')
if not r[1] then return 0 end
local owner, name = r[1], r[2]
redis.call('ZREM', ok(owner) .. ':pending', res)
redis.call('DEL', 'cmcp:r:' .. res)
redis.call('HSET', 'cmcp:c:' .. cid, 'owner', owner, 'name', name, 'created_at', created,
  'state', 'live', 'files', 0, 'bytes', 0, 'meta', meta, 'indexed', 1)
redis.call('ZADD', ok(owner) .. ':all', created, cid)
redis.call('ZADD', ok(owner) .. ':n:' .. name, created, cid)
redis.call('ZADD', ok(owner) .. ':live', created, cid)
redis.call('HINCRBY', 'cmcp:totals', 'containers', 1)
return 1
"""

# ARGV: reservation, seconds to keep the mark (a reserve that arrives later holds nothing).
_CANCEL = """
local owner = redis.call('HGET', 'cmcp:r:' .. ARGV[1], 'owner')
if owner then redis.call('ZREM', ok(owner) .. ':pending', ARGV[1]) end
redis.call('DEL', 'cmcp:r:' .. ARGV[1])
redis.call('SET', 'cmcp:t:' .. ARGV[1], 'taken back', 'EX', ARGV[2])
return 1
"""

# ARGV: owner, container, files, bytes, max files, max session bytes, token.
# Returns {1} when charged (or the container is not live, or the token was taken back already),
# {0, 'files', files} or {0, 'bytes', used}. A charge made is marked under its token for a while,
# so a client that lost the reply can take it back (``_UNCHARGE``), whichever of the two runs first.
_CHARGE = """
local owner, cid, files, bytes = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local mark = 'cmcp:t:' .. ARGV[7]
if redis.call('EXISTS', mark) == 1 then return {1} end
local c = redis.call('HMGET', 'cmcp:c:' .. cid, 'state', 'files')
if c[1] ~= 'live' then return {1} end
if files > 0 and tonumber(c[2]) + files > tonumber(ARGV[5]) then return {0, 'files', tonumber(c[2])} end
if bytes > 0 then
  local used = stored_bytes(owner)
  if used + bytes > tonumber(ARGV[6]) then return {0, 'bytes', used} end
end
adjust(cid, files, bytes)
redis.call('SET', mark, 'charged', 'EX', ARGV[8])
return {1}
"""

# ARGV: token, container, files, bytes, seconds to keep the mark. Takes back the token's charge if
# it was made, and marks it taken back, so a charge that arrives later changes nothing.
_UNCHARGE = """
local mark = 'cmcp:t:' .. ARGV[1]
local was = redis.call('GET', mark)
redis.call('SET', mark, 'taken back', 'EX', ARGV[5])
if was == 'charged' and redis.call('HGET', 'cmcp:c:' .. ARGV[2], 'state') == 'live' then
  adjust(ARGV[2], 0 - tonumber(ARGV[3]), 0 - tonumber(ARGV[4]))
end
return 1
"""

_RELEASE = """
if redis.call('HGET', 'cmcp:c:' .. ARGV[1], 'state') == 'live' then
  adjust(ARGV[1], 0 - tonumber(ARGV[2]), 0 - tonumber(ARGV[3]))
end
return 1
"""

_SET_USAGE = """
local cur = redis.call('HMGET', 'cmcp:c:' .. ARGV[1], 'state', 'files', 'bytes')
if cur[1] == 'live' then
  adjust(ARGV[1], tonumber(ARGV[2]) - tonumber(cur[2]), tonumber(ARGV[3]) - tonumber(cur[3]))
end
return 1
"""

_EXPIRE = """
local c = redis.call('HMGET', 'cmcp:c:' .. ARGV[1], 'owner')
if not c[1] then return 0 end
drop_live(ARGV[1], c[1])
drop_index(ARGV[1])
redis.call('HSET', 'cmcp:c:' .. ARGV[1], 'state', 'expired', 'files', 0, 'bytes', 0)
return 1
"""

_FORGET = """
local c = redis.call('HMGET', 'cmcp:c:' .. ARGV[1], 'owner', 'name')
if not c[1] then return 0 end
drop_live(ARGV[1], c[1])
drop_index(ARGV[1])
redis.call('ZREM', ok(c[1]) .. ':all', ARGV[1])
redis.call('ZREM', ok(c[1]) .. ':n:' .. c[2], ARGV[1])
redis.call('DEL', 'cmcp:c:' .. ARGV[1])
return 1
"""

# ARGV: container, whole ('1': replace the index), then (id, path, meta) triples.
_PUT_FILES = """
local cid = ARGV[1]
if redis.call('HGET', 'cmcp:c:' .. cid, 'state') ~= 'live' then return 0 end
if ARGV[2] == '1' then
  drop_index(cid)
  redis.call('HSET', 'cmcp:c:' .. cid, 'indexed', 1)
end
for i = 3, #ARGV, 3 do index(cid, ARGV[i], ARGV[i + 1], ARGV[i + 2]) end
return 1
"""

# ARGV: container, number of ids, ids..., paths...
_DROP_FILES = """
local cid, n = ARGV[1], tonumber(ARGV[2])
for i = 3, 2 + n do unindex(cid, ARGV[i]) end
for i = 3 + n, #ARGV do
  local id = redis.call('HGET', 'cmcp:fp:' .. cid, ARGV[i])
  if id then unindex(cid, id) end
end
return 1
"""

_UNINDEXED = """
local out = {}
for _, id in ipairs(redis.call('ZRANGE', ok(ARGV[1]) .. ':live', 0, -1)) do
  local c = redis.call('HMGET', 'cmcp:c:' .. id, 'state', 'indexed')
  if c[1] == 'live' and c[2] ~= '1' then table.insert(out, id) end
end
return out
"""

# ARGV: owner, cursor created_at, cursor container, cursor file, limit ('' cursor: from the start).
# Returns {more, created_at, meta, created_at, meta, ...}.
_FILE_PAGE = """
local key = ok(ARGV[1]) .. ':live'
local at, cursor, fid, limit = tonumber(ARGV[2]), ARGV[3], ARGV[4], tonumber(ARGV[5])
local rank = 0
if cursor ~= '' then
  rank = redis.call('ZRANK', key, cursor)
  if not rank then  -- the cursor's container is gone: start where it would be
    rank = redis.call('ZCOUNT', key, '-inf', '(' .. at)
    for _, id in ipairs(redis.call('ZRANGE', key, at, at, 'BYSCORE')) do
      if id < cursor then rank = rank + 1 end
    end
  end
end
local out, found = {0}, 0
while found <= limit do
  local batch = redis.call('ZRANGE', key, rank, rank + 99, 'WITHSCORES')
  if #batch == 0 then break end
  for i = 1, #batch, 2 do
    local cid, created = batch[i], batch[i + 1]
    if redis.call('HGET', 'cmcp:c:' .. cid, 'state') == 'live' then
      local ids
      if cid == cursor then
        ids = redis.call('ZRANGE', 'cmcp:f:' .. cid, '(' .. fid, '+', 'BYLEX', 'LIMIT', 0, limit + 1 - found)
      else
        ids = redis.call('ZRANGE', 'cmcp:f:' .. cid, 0, limit - found)
      end
      for _, id in ipairs(ids) do
        found = found + 1
        if found > limit then out[1] = 1; return out end
        table.insert(out, created)
        table.insert(out, redis.call('HGET', 'cmcp:fm:' .. cid, id))
      end
    end
  end
  rank = rank + 100
end
return out
"""

_LOCATE = """
for _, cid in ipairs(redis.call('ZRANGE', ok(ARGV[1]) .. ':live', 0, -1)) do
  local live = redis.call('HGET', 'cmcp:c:' .. cid, 'state') == 'live'
  if live and redis.call('HEXISTS', 'cmcp:fm:' .. cid, ARGV[2]) == 1 then return cid end
end
return ''
"""
_RECORD = """
if redis.call('EXISTS', 'cmcp:c:' .. ARGV[1]) == 1 then redis.call('HSET', 'cmcp:c:' .. ARGV[1], 'meta', ARGV[2]) end
return 1
"""

_CALLS = """
local function calls(owner, now)
  local window = math.floor(now / 60)
  local cur = tonumber(redis.call('GET', 'cmcp:calls:' .. owner .. ':' .. window) or '0')
  local prev = tonumber(redis.call('GET', 'cmcp:calls:' .. owner .. ':' .. (window - 1)) or '0')
  return cur + prev * (1 - (now % 60) / 60), window
end
"""

# ARGV: owner, now, max. Returns '' when counted, else the calls made (a decimal string).
_HIT = """
local owner, now = ARGV[1], tonumber(ARGV[2])
local made, window = calls(owner, now)
if made + 1 > tonumber(ARGV[3]) then return tostring(made) end
local key = 'cmcp:calls:' .. owner .. ':' .. window
redis.call('INCR', key)
redis.call('EXPIRE', key, 180)
return ''
"""

# ARGV: owner, now. Returns {containers, files, bytes, calls (string)}.
_USAGE = """
local owner = ARGV[1]
local files, bytes = 0, 0
local live = redis.call('ZRANGE', ok(owner) .. ':live', 0, -1)
for _, id in ipairs(live) do
  local c = redis.call('HMGET', 'cmcp:c:' .. id, 'files', 'bytes')
  files = files + tonumber(c[1]); bytes = bytes + tonumber(c[2])
end
local made = calls(owner, tonumber(ARGV[2]))
return {#live, files, bytes, tostring(made)}
"""

_FIELDS = ("owner", "name", "created_at", "state", "files", "bytes", "meta")
_ROW = """
local function row(id)
  local v = redis.call('HMGET', 'cmcp:c:' .. id, 'owner', 'name', 'created_at', 'state', 'files', 'bytes', 'meta')
  if not v[1] then return nil end
  return {id, v[1], v[2], v[3], v[4], v[5], v[6], v[7] or ''}
end
"""

# ARGV: owner, limit, order, after ('' for none), name, whether to filter by name ('1' or '0').
# Returns {'bad-after'} or {has_more, row...}.
_PAGE = """
local owner, limit, asc, after, name = ARGV[1], tonumber(ARGV[2]), ARGV[3] == 'asc', ARGV[4], ARGV[5]
local key = ok(owner) .. (ARGV[6] == '1' and (':n:' .. name) or ':all')
local ids
if after == '' then
  if asc then ids = redis.call('ZRANGE', key, 0, limit) else ids = redis.call('ZREVRANGE', key, 0, limit) end
else
  local anchor = redis.call('HMGET', 'cmcp:c:' .. after, 'owner', 'created_at')
  if anchor[1] ~= owner then return {'bad-after'} end
  local rank = asc and redis.call('ZRANK', key, after) or redis.call('ZREVRANK', key, after)
  if rank then
    if asc then ids = redis.call('ZRANGE', key, rank + 1, rank + 1 + limit)
    else ids = redis.call('ZREVRANGE', key, rank + 1, rank + 1 + limit) end
  else
    -- the anchor is not under this name: start at its score, past the ids it precedes
    local s = tonumber(anchor[2])
    local cand
    if asc then cand = redis.call('ZRANGE', key, s, '+inf', 'BYSCORE')
    else cand = redis.call('ZRANGE', key, s, '-inf', 'BYSCORE', 'REV') end
    ids = {}
    for _, id in ipairs(cand) do
      local score = tonumber(redis.call('ZSCORE', key, id))
      if score ~= s or (asc and id > after) or ((not asc) and id < after) then
        table.insert(ids, id)
        if #ids > limit then break end
      end
    end
  end
end
local out = {#ids > limit and 1 or 0}
for i = 1, math.min(#ids, limit) do
  local r = row(ids[i])
  if r then table.insert(out, r) end
end
return out
"""

_LIVE = """
local out = {}
for _, id in ipairs(redis.call('ZRANGE', ok(ARGV[1]) .. ':live', 0, -1)) do
  local r = row(id)
  if r then table.insert(out, r) end
end
return out
"""

_GET = """
local r = row(ARGV[1])
if r then return {r} end
return {}
"""


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _triples(files: Sequence[ContainerFile]) -> list[str]:
    return [part for f in files for part in (f.id, f.path, f.model_dump_json())]


def _owned(values: list[Any]) -> OwnedContainer:
    cid, owner, name, created_at, state, files, bytes_, meta = (_text(v) for v in values)
    return OwnedContainer(
        container_id=cid,
        owner=owner,
        name=name,
        created_at=int(created_at),
        state=cast(Literal["pending", "live", "expired"], state),
        files=int(files),
        bytes=int(bytes_),
        meta=meta or None,
    )


_UNAVAILABLE_HINT = Hint(
    mcp="Retry in a few seconds; if it persists, ask the operator to check the Redis server named by "
    "CONTAINER_MCP_STATE_URL.",
    rest="Retry in a few seconds; if it persists, ask the operator to check the Redis server named by "
    "CONTAINER_MCP_STATE_URL.",
)


def _unavailable() -> StateUnavailable:
    return StateUnavailable(
        "The shared state store (Redis) that holds ownership and quotas cannot be reached, so the call was refused.",
        hint=_UNAVAILABLE_HINT,
    )


def _bad_credentials() -> StateUnavailable:
    return StateUnavailable(
        "The shared state store (Redis) refused the credentials in CONTAINER_MCP_STATE_URL (a wrong or "
        "missing password or user), so the call was refused.",
        hint=Hint(
            mcp="Ask the operator to correct the password in CONTAINER_MCP_STATE_URL.",
            rest="Ask the operator to correct the password in CONTAINER_MCP_STATE_URL.",
        ),
    )


def _reset() -> StateUnavailable:
    return StateUnavailable(
        "The shared state store (Redis) was reset (its data flushed) while this call was made, so it was "
        "refused; containers recorded before the reset are no longer known.",
        hint=Hint(mcp="Retry the call.", rest="Retry the request."),
    )


def _foreign() -> StateUnavailable:
    return StateUnavailable(
        "The shared state store (Redis) holds data this server did not write under its keys (cmcp:...), "
        "so the call was refused.",
        hint=Hint(
            mcp="Ask the operator to give container-mcp a Redis database of its own in CONTAINER_MCP_STATE_URL.",
            rest="Ask the operator to give container-mcp a Redis database of its own in CONTAINER_MCP_STATE_URL.",
        ),
    )


def _refused(exc: redis.exceptions.ResponseError) -> StateUnavailable:
    """What Redis refusing a script means for the caller: never Redis's own words (they name scripts)."""
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        why = "is a read-only replica"
        fix = "point CONTAINER_MCP_STATE_URL at the primary"
    elif str(exc).startswith("WRONGTYPE"):
        return _foreign()
    else:  # OOM (maxmemory reached), MISCONF (cannot persist), ...
        why = "refused the update (out of memory, or unable to persist: its log says which)"
        fix = "check the Redis server named by CONTAINER_MCP_STATE_URL"
    text = f"Retry later; if it persists, ask the operator to {fix}."
    return StateUnavailable(
        f"The shared state store (Redis) {why}, so the call was refused.", hint=Hint(mcp=text, rest=text)
    )


class RedisLedger:
    """``Ledger`` on one Redis. Open with ``RedisLedger.open(url)``; ``aclose()`` when done."""

    kind = "redis"

    def __init__(self, client: aioredis.Redis, key: bytes) -> None:
        self._redis = client
        self._key = key
        self._key_sha1 = hashlib.sha1(key).hexdigest()

        def script(body: str, *parts: str) -> Callable[..., Awaitable[Any]]:
            return cast(Callable[..., Awaitable[Any]], client.register_script("\n".join([_SAME_KEY, *parts, body])))

        self._reserve = script(_RESERVE, _HELPERS)
        self._commit = script(_COMMIT, _HELPERS)
        self._cancel = script(_CANCEL, _HELPERS)
        self._charge = script(_CHARGE, _HELPERS)
        self._uncharge = script(_UNCHARGE, _HELPERS)
        self._release = script(_RELEASE, _HELPERS)
        self._set_usage = script(_SET_USAGE, _HELPERS)
        self._expire = script(_EXPIRE, _HELPERS)
        self._forget = script(_FORGET, _HELPERS)
        self._record = script(_RECORD)
        self._put_files = script(_PUT_FILES, _HELPERS)
        self._drop_files = script(_DROP_FILES, _HELPERS)
        self._unindexed = script(_UNINDEXED, _HELPERS)
        self._file_page = script(_FILE_PAGE, _HELPERS)
        self._locate = script(_LOCATE, _HELPERS)
        self._hit = script(_HIT, _CALLS)
        self._usage = script(_USAGE, _HELPERS, _CALLS)
        self._page = script(_PAGE, _HELPERS, _ROW)
        self._live = script(_LIVE, _HELPERS, _ROW)
        self._get = script(_GET, _ROW)

    @classmethod
    async def open(cls, url: str) -> RedisLedger:
        """Connect to ``url`` and load (or, first of all processes, make) the HMAC secret.

        Raises ``StateUnavailable`` when Redis does not answer.
        """
        client = aioredis.Redis.from_url(
            url,
            socket_timeout=_TIMEOUT_S,
            socket_connect_timeout=_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
            retry_on_error=[],
        )
        try:
            with anyio.CancelScope(shield=True):
                await client.set(_KEY, secrets.token_bytes(32), nx=True)
                key = await client.get(_KEY)
        except redis.exceptions.AuthenticationError:
            await client.aclose()
            raise _bad_credentials() from None
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            await client.aclose()
            raise _unavailable() from None
        except redis.exceptions.ResponseError:  # e.g. cmcp:key another application's hash
            await client.aclose()
            raise _foreign() from None
        if not isinstance(key, bytes):
            await client.aclose()
            raise _foreign()
        return cls(client, key)

    def digest(self, owner: str) -> str:
        return session_digest(self._key, owner)

    async def _run(self, script: Callable[..., Awaitable[_T]], *args: object) -> _T:
        """One script, shielded from cancellation; connection failures are ``StateUnavailable``.

        A Redis whose secret is gone (flushed) gets this process's back and the script runs
        again; one holding another secret (a process that started after a flush made it) is
        followed from now on, and this call is refused, as its arguments hold digests by the old.
        A script Redis refuses (another application's key of the wrong type) is refused too.
        """
        for attempt in (1, 2):
            try:
                with anyio.CancelScope(shield=True):
                    return await script(keys=[], args=[self._key_sha1, *args])
            except redis.exceptions.AuthenticationError:  # the password was changed under us
                raise _bad_credentials() from None
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
                raise _unavailable() from None
            except redis.exceptions.BusyLoadingError:  # restarted, still reading its append-only file
                raise _unavailable() from None
            except redis.exceptions.ResponseError as exc:
                if not str(exc).startswith(_KEY_CHANGED):
                    log.error("Redis refused a ledger script: %s", str(exc).split(" script: ")[0])
                    raise _refused(exc) from None
            if await self._follow_key() or attempt == 2:
                raise _reset() from None
        raise AssertionError("unreachable")

    async def _follow_key(self) -> bool:
        """Put this process's secret back if Redis has none; adopt the one it has otherwise.
        Returns whether the secret changed."""
        try:
            with anyio.CancelScope(shield=True):
                await self._redis.set(_KEY, self._key, nx=True)
                key = await self._redis.get(_KEY)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            raise _unavailable() from None
        if not isinstance(key, bytes) or key == self._key:
            return False
        log.warning("The Redis ledger's session-key secret changed (the database was flushed?): following it")
        self._key, self._key_sha1 = key, hashlib.sha1(key).hexdigest()
        return True

    async def reserve(self, owner: str, name: str, now: float, limits: Limits) -> str:
        reservation = f"pending_{secrets.token_hex(16)}"
        try:
            done, used = await self._run(
                self._reserve, self.digest(owner), name, now, PENDING_TTL_S, limits.max_containers, reservation
            )
        except StateUnavailable:
            # The reply may have been lost after the slot was held: give it back (see ``charge``).
            with contextlib.suppress(StateUnavailable):
                await self.cancel(reservation)
            raise
        if not done:
            raise over_containers(int(used), limits)
        return reservation

    async def commit(self, reservation: str, container_id: str, created_at: int, meta: str) -> None:
        await self._run(self._commit, reservation, container_id, created_at, meta)

    async def cancel(self, reservation: str) -> None:
        await self._run(self._cancel, reservation, _MARK_S)

    async def charge(self, owner: str, container_id: str, files: int, bytes_: int, limits: Limits) -> None:
        """See ``Ledger.charge``. A charge whose reply was lost (the connection dropped, or Redis
        answered too late) may have been made: it is taken back before ``StateUnavailable`` is
        raised, so the caller, who makes no change, is charged for none either."""
        token = secrets.token_hex(16)
        try:
            out = await self._run(
                self._charge,
                self.digest(owner),
                container_id,
                files,
                bytes_,
                limits.max_files_per_container,
                limits.max_session_bytes,
                token,
                _MARK_S,
            )
        except StateUnavailable:
            with contextlib.suppress(StateUnavailable):  # still away: the charge, if made, stands
                await self._run(self._uncharge, token, container_id, files, bytes_, _MARK_S)
            raise
        if out[0] == 1:
            return
        if _text(out[1]) == "files":
            raise over_files(container_id, int(out[2]), files, limits)
        raise over_bytes(int(out[2]), bytes_, limits)

    async def release(self, container_id: str, files: int, bytes_: int) -> None:
        await self._run(self._release, container_id, files, bytes_)

    async def hit(self, owner: str, now: float, limits: Limits) -> None:
        made = _text(await self._run(self._hit, self.digest(owner), now, limits.max_calls_per_minute))
        if made:
            raise rate_limited(float(made), now, limits)

    async def usage(self, owner: str, now: float) -> Usage:
        containers, files, bytes_, made = await self._run(self._usage, self.digest(owner), now)
        return Usage(
            containers=int(containers), files=int(files), bytes=int(bytes_), calls_last_minute=round(float(made))
        )

    async def page(
        self, owner: str, *, limit: int, order: str, after: str | None, name: str | None
    ) -> tuple[list[OwnedContainer], bool]:
        out = await self._run(
            self._page, self.digest(owner), limit, order, after or "", name or "", "0" if name is None else "1"
        )
        if out and _text(out[0]) == "bad-after":
            assert after is not None
            raise InvalidRequest(
                f"'after' is {after[:80]!r}, which is not one of your containers. Pass the last_id of "
                "the previous page, or omit 'after' to start from the first page.",
                param="after",
            )
        return [_owned(row) for row in out[1:]], bool(out[0])

    async def owned(self, owner: str, container_id: str) -> OwnedContainer | None:
        row = await self.get(container_id)
        return row if row is not None and hmac.compare_digest(row.owner, self.digest(owner)) else None

    async def owns(self, owner: str, container_id: str) -> bool:
        return await self.owned(owner, container_id) is not None

    async def get(self, container_id: str) -> OwnedContainer | None:
        out = await self._run(self._get, container_id)
        return _owned(out[0]) if out else None

    async def live(self, owner: str) -> list[OwnedContainer]:
        rows = [_owned(row) for row in await self._run(self._live, self.digest(owner))]
        return sorted(rows, key=lambda r: (r.created_at, r.container_id))

    async def record(self, container_id: str, meta: str) -> None:
        await self._run(self._record, container_id, meta)

    async def set_usage(self, container_id: str, files: int, bytes_: int) -> None:
        await self._run(self._set_usage, container_id, files, bytes_)

    async def mark_expired(self, container_id: str) -> None:
        await self._run(self._expire, container_id)

    async def forget(self, container_id: str) -> None:
        await self._run(self._forget, container_id)

    async def put_files(self, container_id: str, files: Sequence[ContainerFile]) -> None:
        if files:
            await self._run(self._put_files, container_id, "0", *_triples(files))

    async def drop_files(self, container_id: str, *, file_ids: Sequence[str] = (), paths: Sequence[str] = ()) -> None:
        if file_ids or paths:
            await self._run(self._drop_files, container_id, len(file_ids), *file_ids, *paths)

    async def set_files(self, container_id: str, files: Sequence[ContainerFile]) -> None:
        await self._run(self._put_files, container_id, "1", *_triples(files))

    async def unindexed(self, owner: str) -> list[str]:
        return [_text(c) for c in await self._run(self._unindexed, self.digest(owner))]

    async def file_page(
        self, owner: str, after: FileCursor | None, limit: int
    ) -> tuple[list[tuple[int, ContainerFile]], bool]:
        at, cid, fid = after if after is not None else (0, "", "")
        out = await self._run(self._file_page, self.digest(owner), at, cid, fid, limit)
        page = [
            (int(float(_text(out[i]))), ContainerFile.model_validate_json(_text(out[i + 1])))
            for i in range(1, len(out), 2)
        ]
        return page, bool(out[0])

    async def locate(self, owner: str, file_id: str) -> str | None:
        return _text(await self._run(self._locate, self.digest(owner), file_id)) or None

    async def totals(self) -> Usage:
        try:
            with anyio.CancelScope(shield=True):
                values = await self._redis.hmget("cmcp:totals", ["containers", "files", "bytes"])
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError):
            raise _unavailable() from None
        containers, files, bytes_ = (int(v or 0) for v in values)
        return Usage(containers=containers, files=files, bytes=bytes_, calls_last_minute=0)

    async def aclose(self) -> None:
        await self._redis.aclose()
