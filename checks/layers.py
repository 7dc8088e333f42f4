#!/usr/bin/env python3
"""The server's layers, checked (ARCHITECTURE.md, "Crates and arrows").

1. Arrows between crates point one way: bty-web -> bty-control -> bty-core,
   bty-web -> bty-netboot (which depends on no other bty crate); bty,
   bty-tui -> bty-core. No crate depends on one above it.
2. bty-control and bty-netboot have no HTTP server in them: no axum,
   hyper, tower or tower-http among their dependencies, and none of their
   sources names them.
3. Inside every crate, the modules form no import cycle. A module's arrows
   are the `crate::...` and `super::...` paths in its non-test code, each
   resolved to the longest module it names; a module's `mod` declarations
   are containment, not arrows.

Prints each cycle found (with one path through it) and exits 1; prints one
line per crate and exits 0 when everything holds. Python 3 stdlib only.

    python3 checks/layers.py [RUST_DIR]     (default: rust/ next to checks/)
"""

import os
import re
import sys
import tomllib

HERE = os.path.dirname(os.path.abspath(__file__))
RUST = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "rust")

# Which workspace crates each crate may depend on.
ALLOWED = {
    "bty-core": set(),
    "bty": {"bty-core"},
    "bty-tui": {"bty-core"},
    "bty-control": {"bty-core"},
    # The protocol services know neither the control plane nor HTTP.
    "bty-netboot": set(),
    "bty-web": {"bty-core", "bty-control", "bty-netboot"},
}
HTTP_SERVER = {"axum", "axum-core", "hyper", "hyper-util", "tower", "tower-http", "tower-layer", "tower-service"}

problems = []


def strip_tests_and_comments(src: str) -> str:
    """Non-test code without comments: a `#[cfg(test)] mod ... { }` block is
    cut by brace matching, line comments and doc comments are dropped."""
    src = re.sub(r"//[^\n]*", "", src)
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{", src):
        if m.start() < i:
            continue
        out.append(src[i : m.start()])
        depth, j = 1, m.end()
        while j < len(src) and depth:
            depth += {"{": 1, "}": -1}.get(src[j], 0)
            j += 1
        i = j
    out.append(src[i:])
    return "".join(out)


def modules(src_dir: str) -> dict:
    """Module path ("crate", "handlers::ui", ...) -> source text."""
    found = {}
    for d, _, files in os.walk(src_dir):
        for f in files:
            if not f.endswith(".rs"):
                continue
            rel = os.path.relpath(os.path.join(d, f), src_dir)[:-3].replace(os.sep, "::")
            if rel in ("lib", "main"):
                rel = "crate"
            elif rel.endswith("::mod"):
                rel = rel[: -len("::mod")]
            elif rel.startswith("bin::"):
                continue
            with open(os.path.join(d, f), encoding="utf-8") as fh:
                found[rel] = strip_tests_and_comments(fh.read())
    return found


def resolve(parts: list, mods: set):
    for n in range(len(parts), 0, -1):
        cand = "::".join(parts[:n])
        if cand in mods:
            return cand
    return None


def arrows(mods: dict) -> dict:
    names = set(mods)
    edges = {m: set() for m in mods}
    for m, src in mods.items():
        parent = m.rsplit("::", 1)[0] if "::" in m else "crate"
        for path in re.findall(r"\bcrate((?:::\w+)+)", src):
            target = resolve(path.strip(":").split("::"), names)
            if target and target != m:
                edges[m].add(target)
        if m != "crate":
            for path in re.findall(r"\bsuper((?:::\w+)+)", src):
                parts = path.strip(":").split("::")
                base = [] if parent == "crate" else parent.split("::")
                target = resolve(base + parts, names) or parent
                if target != m:
                    edges[m].add(target)
    # A module's own `mod x;` children are contained, not imported; a
    # reference from lib.rs (the crate root) to its modules is wiring.
    edges["crate"] = set()
    return edges


def cycles(edges: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def one_loop(comp: list, edges: dict) -> list:
    """A path through the component back to its start, for the message."""
    start, members = comp[0], set(comp)
    path, seen = [start], {start}
    while True:
        nxt = sorted(w for w in edges[path[-1]] if w in members)
        back = [w for w in nxt if w == start]
        if back and len(path) > 1:
            return path + [start]
        fresh = [w for w in nxt if w not in seen]
        if not fresh:
            return path + [nxt[0]] if nxt else path
        path.append(fresh[0])
        seen.add(fresh[0])


for crate in sorted(os.listdir(RUST)):
    manifest = os.path.join(RUST, crate, "Cargo.toml")
    if not os.path.exists(manifest):
        continue
    with open(manifest, "rb") as fh:
        deps = set(tomllib.load(fh).get("dependencies", {}))
    local = {d for d in deps if d in ALLOWED}
    if crate in ALLOWED and not local <= ALLOWED[crate]:
        problems.append(f"{crate} depends on {', '.join(sorted(local - ALLOWED[crate]))}: arrows point down only")
    mods = modules(os.path.join(RUST, crate, "src"))
    if crate in ("bty-control", "bty-netboot"):
        bad = sorted(deps & HTTP_SERVER)
        if bad:
            problems.append(f"{crate} depends on {', '.join(bad)}: the HTTP server belongs in bty-web")
        for m, src in sorted(mods.items()):
            named = sorted(set(re.findall(r"\b(axum|hyper|tower(?:_http)?)::", src)))
            if named:
                problems.append(f"{crate} module {m} uses {', '.join(named)}: HTTP belongs in bty-web")
    edges = arrows(mods)
    found = cycles(edges)
    for comp in found:
        loop = " -> ".join(one_loop(comp, edges))
        problems.append(f"{crate}: modules import each other in a circle: {loop} ({len(comp)} modules: {', '.join(comp)})")
    if not found:
        print(f"{crate}: {len(mods)} modules, no import cycle")

if problems:
    for p in problems:
        print(f"layers: {p}", file=sys.stderr)
    sys.exit(1)
