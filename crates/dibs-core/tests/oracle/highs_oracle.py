"""An independent optimum for dibs's placement, with HiGHS (PyPI `highspy`).

Reads one JSON problem per line on stdin and writes one JSON answer per line on stdout.
The model is written here from the offers, not from dibs's merged groups, so it checks the
formulation as well as the solver:

* per offer, integer units: one node when a node holds the block (and `blocks_per_unit`
  = node GPUs // block), or a gang of ceil(block / node GPUs) nodes carrying one block when
  the block is larger than every node of that accelerator; offers whose node is smaller than
  the block while a larger node of the accelerator exists are not eligible;
* blocks carried >= blocks asked, and <= blocks asked - 1 + (largest blocks per unit) * k;
* GPU caps: a provider's GPUs bought plus held <= share * (fleet + GPUs asked) + its largest unit;
* spend caps: a provider's spend plus held <= share * (fleet spend + this award's spend) + its
  largest unit's spend;
* a provider already above its share with nothing bought (the right-hand side below zero at
  an empty award) gets nothing: a cap limits what the award adds, and never forces a purchase
  elsewhere to dilute a share;
* a commitment credit: excess_p >= hours * spend_p - credit_p, costing excess_p instead;
* at least k providers: binary y_p <= units of p, sum y_p >= k; and at least k blocks asked
  (a minimum of providers never makes the buyer buy redundant blocks it did not ask for);
* when the parts start together (`together`): a binary z_L per lead time L says which is
  the award's slowest; an offer's units are split by L, w_oL <= units_o * z_L for L >= its
  lead time, and a unit of o under L bills (L - lead_o) held hours more when o bills from
  delivery (dibs instead enumerates L and solves a model per L).
"""
import json
import math
import sys
import time

import highspy


def solve(problem):
    hours = problem["hours"]
    block = problem["block"]
    needed = math.ceil(problem["gpus"] / block)
    k = problem.get("min_providers") or 1
    credits = problem.get("credits", {})
    if needed < k:
        return {"status": "infeasible"}
    fleet_gpus = problem.get("fleet", {}).get("gpus", {})
    fleet_spend = problem.get("fleet", {}).get("spend_per_hour", {})
    largest = {}
    for o in problem["offers"]:
        largest[o["accelerator"]] = max(largest.get(o["accelerator"], 0), o["gpus_per_node"])
    eligible = []
    for o in problem["offers"]:
        g = o["gpus_per_node"]
        if g < block <= largest[o["accelerator"]]:
            continue
        if block <= g:
            npu, bpu = 1, g // block
        else:
            npu, bpu = math.ceil(block / g), 1
        units = min(o["nodes"] // npu, math.ceil(needed / bpu))
        if units > 0:
            eligible.append((o, npu, bpu, units))
    if not eligible:
        return {"status": "infeasible"}

    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("mip_rel_gap", 0.0)
    h.setOptionValue("mip_abs_gap", 1e-6)
    inf = highspy.kHighsInf
    providers = sorted({o["provider"] for o, _, _, _ in eligible})
    if not hasattr(h, "addIntegral"):
        raise SystemExit("highspy too old: no addIntegral")
    together = problem.get("together", False)
    leads = sorted({o.get("lead", 0) for o, _, _, _ in eligible}) if together else [None]
    z = {lead: h.addBinary(obj=0.0) for lead in leads} if together else {}
    if together:
        h.addConstr(sum(z.values()) == 1)
    u = []
    billed = []  # per offer: node-hours billed per node, as an expression over its split units
    for o, npu, bpu, units in eligible:
        credited = credits.get(o["provider"], 0) > 0
        parts = []
        for lead in leads:
            own = o.get("lead", 0)
            if lead is not None and lead < own:
                continue
            held = (lead - own) if lead is not None and o.get("bills_from_delivery", True) else 0
            cost = 0.0 if credited else o["node_price"] * npu * (hours + held)
            w = h.addIntegral(lb=0, ub=units, obj=cost)
            if lead is not None:
                h.addConstr(w <= units * z[lead])
            parts.append((w, hours + held))
        u.append(sum(w for w, _ in parts))
        billed.append(sum(w * hrs for w, hrs in parts))
    blocks = sum(bpu * v for (o, npu, bpu, units), v in zip(eligible, u))
    h.addConstr(blocks >= needed)
    h.addConstr(blocks <= needed - 1 + max(e[2] for e in eligible) * k)
    total_fleet_gpus = sum(fleet_gpus.values())
    total_fleet_spend = sum(fleet_spend.values())
    award_spend = sum(o["node_price"] * npu * v for (o, npu, bpu, units), v in zip(eligible, u))
    flags = []
    for p in providers:
        mine = [(e, v) for e, v in zip(eligible, u) if e[0]["provider"] == p]
        gpus = sum(o["gpus_per_node"] * npu * v for (o, npu, bpu, units), v in mine)
        spend = sum(o["node_price"] * npu * v for (o, npu, bpu, units), v in mine)
        unit_gpus = max(o["gpus_per_node"] * npu for (o, npu, bpu, units), v in mine)
        unit_spend = max(o["node_price"] * npu for (o, npu, bpu, units), v in mine)
        units_of_p = sum(v for e, v in mine)
        for cap in problem.get("caps", []):
            if cap["basis"] == "gpus":
                room = cap["share"] * (total_fleet_gpus + problem["gpus"]) - fleet_gpus.get(p, 0.0)
                if room + unit_gpus < 0:
                    h.addConstr(units_of_p <= 0)
                else:
                    h.addConstr(gpus <= room + unit_gpus)
            else:
                slack = cap["share"] * total_fleet_spend - fleet_spend.get(p, 0.0) + unit_spend
                if slack < 0:
                    h.addConstr(units_of_p <= 0)
                else:
                    h.addConstr(spend + fleet_spend.get(p, 0.0) <= cap["share"] * (total_fleet_spend + award_spend) + unit_spend)
        credit = credits.get(p, 0)
        if credit > 0:
            excess = h.addVariable(lb=0, ub=inf, obj=1.0)
            spend_billed = sum(e[0]["node_price"] * e[1] * b for e, b in zip(eligible, billed) if e[0]["provider"] == p)
            h.addConstr(spend_billed - excess <= credit)
        if k > 1:
            y = h.addBinary(obj=0.0)
            h.addConstr(y <= sum(v for e, v in mine))
            flags.append(y)
    if k > 1:
        h.addConstr(sum(flags) >= k)
    started = time.perf_counter()
    h.run()
    elapsed = time.perf_counter() - started
    status = h.getModelStatus()
    if status == highspy.HighsModelStatus.kOptimal:
        return {"status": "optimal", "objective": h.getInfo().objective_function_value, "seconds": elapsed}
    if status == highspy.HighsModelStatus.kInfeasible:
        return {"status": "infeasible", "seconds": elapsed}
    return {"status": str(status), "seconds": elapsed}


for line in sys.stdin:
    if line.strip():
        print(json.dumps(solve(json.loads(line))), flush=True)
