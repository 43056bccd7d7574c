"""remoteproc with transport="openssh": the same measurements as ``peer_remoteproc``, over the
``ssh`` program instead of paramiko (the baseline to compare with is ``ssh HOST cat``)."""

from __future__ import annotations

import json
import sys

from . import peer_openssh, peer_remoteproc
from .common import cold_main, echo_round_trip, helper_command, message_throughput, peer_main, stream_throughput

NAME = "remoteproc-openssh"


def _with_transport(cfg):
    """The same host as the ``ssh`` peer reaches it (its ssh_config alias, so the same cipher), with
    transport="openssh"; written to a config file of its own for the cold starts."""
    host = cfg["host"]
    options = {"transport": "openssh"}
    if "-F" in host["ssh_opts"]:
        options["ssh_config"] = host["ssh_opts"][host["ssh_opts"].index("-F") + 1]
    if host["options"].get("python"):
        options["python"] = host["options"]["python"]
    cfg = dict(cfg, host=dict(host, spec=host["ssh_dest"], options=options))
    cfg.setdefault("peer_label", NAME)
    path = cfg["config_path"]
    if not path.endswith(".openssh.json"):
        cfg["config_path"] = path[:-len(".json")] + ".openssh.json"
        with open(cfg["config_path"], "w", encoding="utf-8") as f:
            json.dump(cfg, f)
    return cfg


def cold_once(cfg) -> float:
    return peer_remoteproc.cold_once(_with_transport(cfg))


def run(cfg, rec) -> None:
    host = cfg["host"]
    cfg = _with_transport(cfg)
    rec.data["info"]["transport"] = "openssh"
    # ``ssh HOST cat`` and the sink/source helper, run by run alternately with ours (the targets'
    # baseline): measured minutes apart in the ssh peer, the two see different phases of the machine
    cat = peer_openssh.Pipe(host, "cat")
    helper = peer_openssh.Pipe(host, helper_command(host["python"]))
    framed = None
    try:
        up, down = stream_throughput(helper.write, helper.read_exact)
        up_msg, down_msg, rt_msg, framed = message_throughput(helper.w, helper.r, helper.write, helper.read_exact)
        pair = (peer_openssh.NAME, {"rt": echo_round_trip(cat.write, cat.read_exact), "up": up, "down": down,
                                    "rt_msg": rt_msg, "up_msg": up_msg, "down_msg": down_msg})
        peer_remoteproc.run(cfg, rec, pair=pair)
    finally:
        if framed is not None:
            framed()
        cat.close()
        helper.close()


if __name__ == "__main__":
    if sys.argv[1] == "--cold":
        cold_main(cold_once)
    else:
        peer_main(run)
