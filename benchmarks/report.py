"""Tables, targets, the markdown page and the chart, from the samples the peers recorded."""

from __future__ import annotations

import os
import statistics
from typing import Any

from .common import METRICS

PEER_ORDER = ["remoteproc", "remoteproc-openssh", "paramiko", "ssh", "execnet", "mitogen", "mp-fork", "mp-spawn",
              "mp-forkserver"]
PEER_TITLES = {
    "remoteproc": "remoteproc",
    "remoteproc-openssh": "remoteproc (ssh)",
    "paramiko": "raw paramiko",
    "ssh": "OpenSSH ssh",
    "execnet": "execnet",
    "mitogen": "mitogen",
    "mp-fork": "mp fork",
    "mp-spawn": "mp spawn",
    "mp-forkserver": "mp forkserver",
}
ROWS = [
    ("cold_start", "cold start: new connection to first message"),
    ("warm_start", "warm start: start() to first message"),
    ("warm_start_join", "warm start + join, trivial target"),
    ("rt100", "round trip, 100 B"),
    ("up_1m", "upload, 1 MiB messages"),
    ("down_1m", "download, 1 MiB messages"),
    ("up_64m", "upload, 64 MiB messages"),
    ("down_64m", "download, 64 MiB messages"),
    ("conc100", "100 processes at once, 1 message each, joined"),
    ("seq100", "100 warm starts in a row, same work"),
    ("rt100_load", "round trip, 100 B, 1 busy thread"),
    ("up_1m_load", "upload, 1 MiB msgs, 1 busy thread"),
    ("rt100_pair", "round trip, 100 B, alternating with ssh"),
    ("up_1m_pair", "upload, 1 MiB msgs, alternating with ssh"),
    ("down_1m_pair", "download, 1 MiB msgs, alternating with ssh"),
    ("rt100_msgpair", "round trip, 100 B, alternating with ssh + Connection echo"),
    ("up_1m_msgpair", "upload, 1 MiB msgs, alternating with ssh + Connection"),
    ("down_1m_msgpair", "download, 1 MiB msgs, alternating with ssh + Connection"),
]
MAIN = "remoteproc"


# -- figures ---------------------------------------------------------------------------------

def median(host: dict, peer: str, metric: str) -> float | None:
    samples = host["peers"].get(peer, {}).get("metrics", {}).get(metric)
    return statistics.median(samples) if samples else None


def fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    unit, _higher = METRICS[metric]
    if unit == "MB/s":
        return "%.0f MB/s" % value if value >= 10 else "%.1f MB/s" % value
    if value < 1e-3:
        return "%.0f us" % (value * 1e6)
    if value < 1:
        return "%.1f ms" % (value * 1e3) if value < 0.1 else "%.0f ms" % (value * 1e3)
    return "%.2f s" % value


def ratio(host: dict, metric: str, peer: str) -> float | None:
    """remoteproc's figure divided by the peer's."""
    ours, theirs = median(host, MAIN, metric), median(host, peer, metric)
    if ours is None or not theirs:
        return None
    return ours / theirs


def cell(host: dict, metric: str, peer: str) -> str:
    value = median(host, peer, metric)
    if value is None:
        return "-"
    if peer == MAIN:
        return fmt(metric, value)
    r = ratio(host, metric, peer)
    return fmt(metric, value) + ("" if r is None else " (x%s)" % _r(r))


def _r(r: float) -> str:
    return "%.2f" % r if r < 10 else "%.1f" % r


def peers_of(host: dict) -> list[str]:
    return [p for p in PEER_ORDER if host["peers"].get(p, {}).get("metrics")]


# -- targets -----------------------------------------------------------------------------------

def targets(host: dict) -> list[dict[str, Any]]:
    """The issue's targets, as ratios within this run."""
    out = []

    def add(name: str, metric: str, base_peer: str, base_metric: str, limit: float, at_most: bool,
            peer: str = MAIN) -> None:
        ours = median(host, peer, metric)
        theirs = median(host, base_peer, base_metric)
        r = ours / theirs if ours is not None and theirs else None
        ok = None if r is None else (r <= limit if at_most else r >= limit)
        out.append({"name": name, "ours": fmt(metric, ours), "theirs": fmt(base_metric, theirs),
                    "ratio": r, "limit": ("<= " if at_most else ">= ") + "%gx" % limit,
                    "result": "n/a" if ok is None else ("PASS" if ok else "MISS")})

    add("100 B round trip vs raw paramiko", "rt100", "paramiko", "rt100", 2.0, True)
    add("100 B round trip vs execnet", "rt100", "execnet", "rt100", 0.9, True)
    for m, label in (("up_1m", "upload 1 MiB"), ("down_1m", "download 1 MiB"),
                     ("up_64m", "upload 64 MiB"), ("down_64m", "download 64 MiB")):
        add("%s vs raw paramiko" % label, m, "paramiko", m, 0.75, False)
    for m, label in (("up_1m", "upload 1 MiB"), ("down_1m", "download 1 MiB"),
                     ("up_64m", "upload 64 MiB"), ("down_64m", "download 64 MiB")):
        add("%s vs execnet" % label, m, "execnet", m, 10.0, False)
    add("cold start vs execnet gateway start", "cold_start", "execnet", "cold_start", 0.5, True)
    add("warm start+join vs local spawn start+join", "warm_start_join", "mp-spawn", "warm_start_join", 0.5, True)
    add("100 at once vs 100 warm starts in a row", "conc100", MAIN, "seq100", 0.5, True)
    add("round trip, busy thread, vs local Pipe under the same load", "rt100_load", "mp-fork", "rt100_load",
        1.5, True)
    add("1 MiB upload, busy thread, vs idle upload", "up_1m_load", MAIN, "up_1m", 0.5, False)
    add("1 MiB upload, busy thread, vs local Pipe under the same load", "up_1m_load", "mp-fork", "up_1m_load",
        0.9, False)
    ssh = "remoteproc-openssh"
    for m, label, limit, at_most in (("rt100", "100 B round trip vs ssh HOST cat", 2.5, True),
                                     ("up_1m", "upload 1 MiB vs ssh", 0.9, False),
                                     ("down_1m", "download 1 MiB vs ssh", 0.9, False)):
        # the figures taken run by run alternately with ssh's, where the run has them: a phase of
        # the machine then slows both sides alike
        if median(host, ssh, m + "_pair") is not None and median(host, "ssh", m + "_pair") is not None:
            add("transport=openssh: %s (alternating runs)" % label, m + "_pair", "ssh", m + "_pair", limit,
                at_most, ssh)
        else:
            add("transport=openssh: %s" % label, m, "ssh", m, limit, at_most, ssh)
    for m, label, limit, at_most in (("rt100", "100 B round trip", 2.5, True), ("up_1m", "upload 1 MiB", 0.9, False),
                                     ("down_1m", "download 1 MiB", 0.9, False)):
        # the same target against ssh carrying messages framed as ours are (Connection at both ends)
        if median(host, ssh, m + "_msgpair") is not None:
            add("transport=openssh: %s vs ssh, both framed by Connection (alternating runs)" % label,
                m + "_msgpair", "ssh", m + "_msgpair", limit, at_most, ssh)
    add("transport=openssh: round trip, busy thread, vs local Pipe", "rt100_load", "mp-fork", "rt100_load",
        1.0, True, ssh)
    return out


# -- text -------------------------------------------------------------------------------------

def _grid(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = "  ".join("%-*s" % (w, h) for w, h in zip(widths, header))
    out = [line, "  ".join("-" * w for w in widths)]
    for r in rows:
        out.append("  ".join(("%-*s" if i == 0 else "%*s") % (w, c) for i, (w, c) in enumerate(zip(widths, r))))
    return "\n".join(out)


def host_rows(host: dict) -> tuple[list[str], list[list[str]]]:
    peers = peers_of(host)
    header = ["metric"] + [PEER_TITLES[p] for p in peers]
    rows = []
    for metric, label in ROWS:
        row = [label] + [cell(host, metric, p) for p in peers]
        if any(c != "-" for c in row[1:]):
            rows.append(row)
    return header, rows


def target_rows(host: dict) -> tuple[list[str], list[list[str]]]:
    header = ["target", "remoteproc", "baseline", "ratio", "limit", "result"]
    rows = [[t["name"], t["ours"], t["theirs"], "-" if t["ratio"] is None else "%.2fx" % t["ratio"],
             t["limit"], t["result"]] for t in targets(host)]
    return header, rows


def render_text(results: dict) -> str:
    parts = ["remoteproc benchmarks, %s (medians; baseline cells show (x remoteproc / baseline))"
             % results.get("started", "")]
    for host in results["hosts"]:
        header, rows = host_rows(host)
        parts += ["", "== %s ==" % host["label"], _grid(header, rows)]
        for module, why in host.get("skipped_peers", {}).items():
            parts.append("  %s did not run: %s" % (module, why.splitlines()[-1] if why else "?"))
        for peer, pdata in host["peers"].items():
            for metric, why in pdata.get("skipped", {}).items():
                parts.append("  %s %s skipped: %s" % (peer, metric, why))
        if not host.get("subset"):
            header, rows = target_rows(host)
            parts += ["", _grid(header, rows)]
    if "duration" in results:
        parts.append("\n(%.0f s)" % results["duration"])
    return "\n".join(parts)


# -- markdown and chart -----------------------------------------------------------------------------

ANALYSIS_START = "<!-- analysis: kept when the page is regenerated -->"
ANALYSIS_END = "<!-- /analysis -->"


def _wmem(value) -> str:
    if value is None:
        return ""
    return (", `net.core.wmem_max` %d KiB (the largest send buffer `start()` can give the parent's end "
            "of a Pipe is twice it, at most 4 MiB; Linux's default is 208 KiB)" % (value // 1024))


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def render_markdown(results: dict, analysis: str) -> str:
    m = results["machine"]
    v = {k: ".".join(map(str, x)) if isinstance(x, list) else x for k, x in results.get("versions", {}).items()}
    lines = [
        "# Performance",
        "",
        "Generated by `%s` on %s (%.0f s). Regenerate with" % (results.get("command", "?"), results.get("started"),
                                                              results.get("duration", 0)),
        "`python3 benchmarks/run.py --write-docs` (add `--quick` for a one-minute run, `--host user@host` to",
        "measure a real host too). Every figure is the median of several runs (%d for most figures, %d for"
        % (results["plan"]["runs"], results["plan"]["cold_runs"]),
        "cold starts, %d for warm starts); a baseline's cell shows its figure and, in brackets, remoteproc's"
        % results["plan"]["start_runs"],
        "figure divided by it: for times below 1 is faster than the baseline, for MB/s above 1 is faster.",
        "",
        "## Machine and versions",
        "",
        "- %s, %s CPUs (shared with other work: load average %s at the start, %s at the end), %s memory, "
        "Linux %s%s" % (m.get("cpu"), m.get("nproc"), _load(m.get("loadavg_start")), _load(m.get("loadavg_end")),
                        m.get("memory"), m.get("kernel"), _wmem(m.get("wmem_max"))),
        "- Python %s locally; remote %s; paramiko %s; cloudpickle %s; cryptography %s" % (
            v.get("python"), v.get("remote_python"), v.get("paramiko"), v.get("cloudpickle"), v.get("cryptography")),
        "- %s; execnet %s; mitogen %s" % (v.get("openssh"), v.get("execnet"), v.get("mitogen")),
        "- remoteproc %s at `%s`%s" % (v.get("remoteproc"), v.get("commit"), (
            "; its modules byte-compiled before the run, as `pip install` does (this machine sets "
            "PYTHONDONTWRITEBYTECODE, which would otherwise make every relay process compile them)"
            if m.get("bytecompiled") else "")),
        "- The chart needs matplotlib (%s): a benchmark-only dependency, as are execnet and mitogen "
        "(`pip install matplotlib execnet mitogen`); a missing peer is reported and skipped." % v.get("matplotlib"),
        "",
    ]
    for host in results["hosts"]:
        header, rows = host_rows(host)
        lines += ["## %s" % host["label"], "", _md_table(header, rows), ""]
        notes = _notes(host)
        if notes:
            lines += notes + [""]
        if not host.get("subset"):
            header, rows = target_rows(host)
            lines += ["### Targets", "", _md_table(header, rows), ""]
    lines += ["![remoteproc against its peers](performance.png)", "", METHOD, "", ANALYSIS_START,
              analysis.strip() or "(no analysis yet)", ANALYSIS_END, ""]
    return "\n".join(lines)


def _load(la) -> str:
    return "/".join("%.2f" % x for x in la) if la else "?"


def _notes(host: dict) -> list[str]:
    out = []
    for peer in PEER_ORDER + ["ssh-curve25519"]:
        pdata = host["peers"].get(peer)
        if not pdata:
            continue
        for metric, text in pdata.get("notes", {}).items():
            if pdata["metrics"].get(metric):
                out.append("- %s, %s: %s" % (PEER_TITLES.get(peer, peer), metric, text))
        for metric, why in pdata.get("skipped", {}).items():
            out.append("- %s, %s: not measured: %s" % (PEER_TITLES.get(peer, peer), metric, why))
    kex = median(host, "ssh-curve25519", "cold_start")
    if kex is not None:
        out.append("- OpenSSH cold start with `KexAlgorithms=curve25519-sha256` (the key exchange paramiko "
                   "uses): %s" % fmt("cold_start", kex))
    for module, why in host.get("skipped_peers", {}).items():
        out.append("- %s did not run: %s" % (module, why.strip().splitlines()[-1] if why else "?"))
    return out


METHOD = """## What each figure measures

- **cold start**: each sample in a fresh interpreter, timed from after the library's import:
  remoteproc starts its relay process (which imports paramiko), connects, authenticates, starts
  the remote agent and the child, and the child's first message arrives; raw paramiko connects
  and execs a remote `python3` that writes one byte; `ssh` does the same with a new `ssh`
  process; execnet is `makegateway()` plus a `remote_exec` that sends one message; mitogen is
  `router.ssh()` plus one call.
- **warm start**: the connection is open. remoteproc: `Pipe()`, `RemoteProcess(...)`, `start()`,
  first message from the child. Local multiprocessing: the same code with `Process`. Raw
  paramiko: a new exec channel running `python3` to its first byte (what a process costs with
  no resident agent). execnet: a `remote_exec` (a thread in the remote interpreter); mitogen: a
  call (no new process) - shown for scale, they start no process.
- **warm start + join**: `start()` and `join()` of a target that does nothing.
- **round trip**: a 100-byte message to an echoing child and back, `send_bytes`/`recv_bytes`
  (remoteproc and local Pipe), through `cat` (paramiko, ssh), `channel.send`/`receive`
  (execnet), a call with a 100-byte argument and result (mitogen).
- **throughput**: random bytes (incompressible; execnet and mitogen run ssh with compression),
  many 1 MiB or a few 64 MiB messages one way, timed until the receiver has them all
  (upload: until the child's acknowledgement). remoteproc and local Pipe receive with
  `recv_bytes_into`; paramiko and ssh stream through a small python sink/source on the remote
  host reading and writing 1 MiB pieces; mitogen pipelines `call_async`.
- **100 processes**: 100 `RemoteProcess` objects with a Pipe each, all started, each sent one
  100-byte message that it echoes, all joined; against the same work done one process after the other.
- **busy thread**: the same round trip and 1 MiB upload while the parent runs one CPU-bound
  pure-Python thread; local Pipe (a forked child) under the same load is the baseline, measured
  run by run alternately with remoteproc so that both see the same conditions. The figures are
  bimodal on a busy machine: when other work starves the busy thread of CPU it rarely holds the
  GIL, and the figures come out close to the idle ones (a run in that mode proves nothing).
- **alternating with ssh**: the round trip and the 1 MiB figures of remoteproc with
  `transport="openssh"`, measured once more run by run alternately with `ssh HOST cat` and the
  sink/source helper over `ssh`, in the same peer process: the openssh targets use these, since
  the two peers' own rows are taken minutes apart, and this machine's speed drifts by 2x and more
  within minutes.
- **alternating with ssh + Connection**: the same, against `ssh` carrying messages framed as
  remoteproc's are: `multiprocessing`'s `Connection` reads and writes at both ends of `ssh` (the
  remote helper's echo is a Python loop then, not `cat`), so only what carries the bytes differs.
- Raw paramiko and OpenSSH use the cipher remoteproc negotiates (aes128-gcm@openssh.com);
  paramiko also the same window (8 MiB), packet size (128 KiB) and TCP_NODELAY. OpenSSH,
  execnet and mitogen keep OpenSSH's default key exchange (sntrup761x25519, about 150 ms slower
  per connection than paramiko's curve25519; the cold start with curve25519 is listed too).
- Each peer runs in a subprocess of its own (no shared threads or imports); the loopback sshd
  and every process a peer starts are stopped by process id when it ends or runs out of time."""


def write_docs(results: dict, docs_dir: str) -> tuple[str, str]:
    os.makedirs(docs_dir, exist_ok=True)
    md_path = os.path.join(docs_dir, "performance.md")
    png_path = os.path.join(docs_dir, "performance.png")
    analysis = ""
    if os.path.exists(md_path):
        with open(md_path, encoding="utf-8") as f:
            text = f.read()
        if ANALYSIS_START in text and ANALYSIS_END in text:
            analysis = text.split(ANALYSIS_START, 1)[1].split(ANALYSIS_END, 1)[0]
    chart(results, png_path)
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(render_markdown(results, analysis))
    return md_path, png_path


COLORS = {
    "remoteproc": "#d62728", "remoteproc-openssh": "#ff9896", "paramiko": "#7f7f7f", "ssh": "#bcbd22",
    "execnet": "#1f77b4",
    "mitogen": "#9467bd", "mp-fork": "#2ca02c", "mp-spawn": "#98df8a", "mp-forkserver": "#17becf",
}


def chart(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    host = next((h for h in results["hosts"] if not h.get("subset")), results["hosts"][0])
    panels = [
        ("Start-up (ms, log scale; lower is better)", ["cold_start", "warm_start", "warm_start_join"], 1e3, True),
        ("100-byte round trip (us, log scale; lower is better)", ["rt100", "rt100_load"], 1e6, True),
        ("Throughput (MB/s; higher is better)", ["up_1m", "down_1m", "up_64m", "down_64m", "up_1m_load"], 1, False),
        ("100 processes (s; lower is better)", ["conc100", "seq100"], 1, False),
    ]
    labels = dict(ROWS)
    fig, axes = plt.subplots(2, 2, figsize=(15, 10))
    handles: dict[str, Any] = {}
    for ax, (title, metrics, scale, log) in zip(axes.flat, panels):
        peers = [p for p in PEER_ORDER if any(median(host, p, m) is not None for m in metrics)]
        n = max(1, len(peers))
        height = 0.8 / n
        for j, peer in enumerate(peers):
            ys, xs = [], []
            for i, m in enumerate(metrics):
                value = median(host, peer, m)
                if value is not None:
                    ys.append(i + (n - 1 - j) * height - 0.4 + height / 2)
                    xs.append(value * scale)
            bars = ax.barh(ys, xs, height=height, color=COLORS.get(peer, "#333333"), label=PEER_TITLES[peer])
            handles[peer] = bars
            for bar, x in zip(bars, xs):
                ax.text(bar.get_width(), bar.get_y() + bar.get_height() / 2, " %s" % _short(x),
                        va="center", fontsize=7)
        ax.set_yticks(range(len(metrics)))
        ax.set_yticklabels([labels[m] for m in metrics], fontsize=8)
        ax.invert_yaxis()
        if log:
            ax.set_xscale("log")
            lo, hi = ax.get_xlim()
            ax.set_xlim(lo, hi * 4)         # room for the value labels
        else:
            lo, hi = ax.get_xlim()
            ax.set_xlim(lo, hi * 1.12)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    order = [p for p in PEER_ORDER if p in handles]
    fig.legend([handles[p] for p in order], [PEER_TITLES[p] for p in order], loc="lower center", ncol=len(order),
               fontsize=9, frameon=False)
    fig.suptitle("remoteproc against its peers: %s, %s" % (host["label"], results.get("started", "")))
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _short(x: float) -> str:
    if x >= 100:
        return "%.0f" % x
    if x >= 10:
        return "%.1f" % x
    return "%.2f" % x
