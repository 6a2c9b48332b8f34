"""Serving profiles as data: pools of engine replicas, their knobs by intent, and routing rules.

A profile is smoke/profiles/NAME.toml, registered by its file name (GuideLLM-style); a path is read
as is. It names pools (replicas of the engine image, cores per replica, knobs by intent, how the
router balances within the pool) and routing (request class → pool, a default pool for the rest).
Every key is checked at load time; mistakes are one UsageError line "file: key: what was expected".
Knob values are checked against smoke/sweep/knobs.toml here; whether the engine under test accepts
them is decided later, from the engine itself (smoke.sweep.knobs.translate).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.errors import UsageError, did_you_mean
from model.spec import read_toml
from smoke.mix import Mix
from smoke.sweep import knobs as knobmod

PROFILES_DIR = Path(__file__).with_name("profiles")
BALANCE = ("round_robin", "least_conn", "prefix_hash")
_POOL_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")  # becomes a DNS alias and an nginx upstream name


@dataclass(frozen=True)
class Pool:
    name: str
    replicas: int
    cores: int                       # per replica; the sweep turns these into cpusets
    balance: str                     # within the pool: round_robin | least_conn | prefix_hash
    knobs: tuple[tuple[str, Any], ...]
    image: str = ""                  # "" = the sweep's engine image

    @property
    def knob_dict(self) -> dict[str, Any]:
        return dict(self.knobs)


@dataclass(frozen=True)
class Profile:
    name: str
    source: str
    description: str
    pools: tuple[Pool, ...]
    default_pool: str
    routes: tuple[tuple[str, str], ...]   # (class, pool)

    def pool(self, name: str) -> Pool:
        return next(p for p in self.pools if p.name == name)

    def pool_for(self, cls: str) -> str:
        return dict(self.routes).get(cls, self.default_pool)

    @property
    def replicas(self) -> int:
        return sum(p.replicas for p in self.pools)

    def check_classes(self, mix: Mix) -> None:
        """Every routed class exists in the mix (a typo would silently send it to the default pool)."""
        names = [c.name for c in mix.classes]
        for cls, _ in self.routes:
            if cls not in names:
                raise UsageError(f"{self.source}: routing.classes.{cls}: not a class of mix {mix.name!r}"
                                 f"{did_you_mean(cls, names)} (classes: {', '.join(names)})")


def registered() -> dict[str, Path]:
    return {p.stem: p for p in sorted(PROFILES_DIR.glob("*.toml"))}


def resolve(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise UsageError(f"{p}: no such profile file")
        return p
    reg = registered()
    if str(name_or_path) in reg:
        return reg[str(name_or_path)]
    raise UsageError(f"{name_or_path}: not a profile file or a registered profile{did_you_mean(str(name_or_path), reg)}"
                     f" (registered: {', '.join(reg)})")


def _fail(source: str, key: str, what: str) -> None:
    raise UsageError(f"{source}: {key}: {what}")


def _unknown(source: str, where: str, table: dict, known: tuple[str, ...]) -> None:
    for k in table:
        if k not in known:
            _fail(source, f"{where}{k}", f"unknown key{did_you_mean(k, known)} (known: {', '.join(known)})")


def _int(source: str, key: str, v: Any, default: int) -> int:
    if v is None:
        return default
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        _fail(source, key, f"expected a positive integer, got {v!r}")
    return v


def _pool(source: str, name: str, t: Any, intents) -> Pool:
    where = f"pools.{name}"
    if not isinstance(t, dict):
        _fail(source, where, f"expected a table, got {type(t).__name__}")
    if not _POOL_NAME.match(name):
        _fail(source, where, "expected a pool name of lowercase letters, digits and '-' (it becomes a host name)")
    _unknown(source, where + ".", t, ("replicas", "cores", "balance", "knobs", "image"))
    balance = t.get("balance", "round_robin")
    if balance not in BALANCE:
        _fail(source, f"{where}.balance", f"expected one of {', '.join(BALANCE)}, got {balance!r}"
                                          f"{did_you_mean(str(balance), BALANCE)}")
    knobs = t.get("knobs", {})
    if not isinstance(knobs, dict):
        _fail(source, f"{where}.knobs", f"expected a table of knob = value, got {type(knobs).__name__}")
    knobmod.check_names(knobs, f"{source}: {where}.knobs", intents)
    image = t.get("image", "")
    if not isinstance(image, str):
        _fail(source, f"{where}.image", f"expected an image tag, got {image!r}")
    return Pool(name, _int(source, f"{where}.replicas", t.get("replicas"), 1),
                _int(source, f"{where}.cores", t.get("cores"), 1), balance, tuple(knobs.items()), image)


def parse(doc: dict[str, Any], source: str, stem: str) -> Profile:
    _unknown(source, "", doc, ("profile", "pools", "routing"))
    meta = doc.get("profile", {})
    _unknown(source, "profile.", meta, ("name", "description"))
    name = meta.get("name", stem)
    if not isinstance(name, str) or not name:
        _fail(source, "profile.name", f"expected a non-empty string, got {name!r}")
    intents = knobmod.load_intents()
    pools_t = doc.get("pools")
    if not isinstance(pools_t, dict) or not pools_t:
        _fail(source, "pools", "expected at least one [pools.NAME] table")
    pools = tuple(_pool(source, k, v, intents) for k, v in pools_t.items())
    names = [p.name for p in pools]
    r = doc.get("routing", {})
    if not isinstance(r, dict):
        _fail(source, "routing", "expected a table")
    _unknown(source, "routing.", r, ("default", "classes"))
    default = r.get("default", names[0] if len(names) == 1 else None)
    if default is None:
        _fail(source, "routing.default", f"missing: with several pools, name the pool for unrouted classes ({', '.join(names)})")
    if default not in names:
        _fail(source, "routing.default", f"no pool {default!r}{did_you_mean(str(default), names)} (pools: {', '.join(names)})")
    classes = r.get("classes", {})
    if not isinstance(classes, dict):
        _fail(source, "routing.classes", "expected a table of class = pool")
    for cls, pool in classes.items():
        if pool not in names:
            _fail(source, f"routing.classes.{cls}", f"no pool {pool!r}{did_you_mean(str(pool), names)} (pools: {', '.join(names)})")
    used = {default, *classes.values()}
    for p in names:
        if p not in used:
            _fail(source, f"pools.{p}", "no class is routed here (add it to routing.classes or make it routing.default)")
    return Profile(name, source, str(meta.get("description", "")), pools, default, tuple(classes.items()))


def load(name_or_path: str | Path) -> Profile:
    path = resolve(name_or_path)
    return parse(read_toml(path), str(path), path.stem)


def load_many(names: list[str] | tuple[str, ...] | None) -> list[Profile]:
    """The named profiles (comma-separated allowed), or every registered one in file order."""
    if not names:
        return [load(p) for p in registered().values()]
    flat = [n.strip() for x in names for n in str(x).split(",") if n.strip()]
    return [load(n) for n in flat]


@dataclass(frozen=True)
class Placement:
    pool: str
    index: int
    cpuset: str          # e.g. "0" or "0,1"
    shared: bool         # some core also serves another replica


def place(profile: Profile, cpus: list[int] | tuple[int, ...]) -> tuple[Placement, ...]:
    """Give replicas cores in order; with more cores asked than the host has, wrap around (shared)."""
    cpus = list(cpus)
    asked = sum(p.replicas * min(p.cores, len(cpus)) for p in profile.pools)
    shared = asked > len(cpus)
    out, k = [], 0
    for p in profile.pools:
        for i in range(p.replicas):
            take = [cpus[(k + j) % len(cpus)] for j in range(min(p.cores, len(cpus)))]
            k += len(take)
            out.append(Placement(p.name, i, ",".join(map(str, sorted(take))), shared))
    return tuple(out)
