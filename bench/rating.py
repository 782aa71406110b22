"""Rating throughput and deck compile cost: compiled engine against its pure-Python twin.

A deterministic synthetic tariff (prefixes of 1-15 digits spread over real
country codes in proportion to a rough traffic weight, three time bands in
Europe/Zurich with holidays, a mix of 60/60, 30/6 and 1/1 increments, fees and
minimums) and a deterministic set of calls (international, `+`, `00` and
national formats, ~2% unroutable, durations up to an hour, starts over a month)
are rated with `rate_batch` on one core. Calls pick prefixes uniformly within a
country (every prefix as likely: the worst case for caches) and, as a second
figure for the compiled engine, by a Zipf law (most calls to few destinations,
as in real traffic).

Each (deck size, engine) runs in a fresh child process pinned to one CPU, so
compile time and resident memory are those of that deck alone. The compiled
engine rates all calls (median of several runs); the twin rates a subset and is
reported per call. One JSON document is printed:

    python -m bench.rating [--calls 1000000] [--sizes 10000,100000,1000000]
                           [--twin-calls 20000] [--twin-sizes 10000,100000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from array import array

from ocs.rating import BandRule, Holiday, Numbering, TariffDefinition, compile
from ocs.rating.decks import Deck

SEED = 20261125
START = 1_793_487_600_000_000   # 2026-11-01T00:00:00+01:00 in µs
MONTH_US = 30 * 86400 * 1_000_000

# Country calling codes with a rough traffic weight (bigger = more prefixes and calls).
COUNTRIES = {
    "1": 60, "7": 12, "20": 6, "27": 4, "30": 3, "31": 6, "32": 4, "33": 14, "34": 10,
    "36": 3, "39": 12, "40": 4, "41": 8, "43": 4, "44": 16, "45": 3, "46": 4, "47": 3,
    "48": 5, "49": 18, "51": 3, "52": 6, "53": 2, "54": 4, "55": 10, "56": 3, "57": 4,
    "58": 2, "60": 3, "61": 6, "62": 8, "63": 6, "64": 2, "65": 3, "66": 4, "81": 10,
    "82": 6, "84": 5, "86": 20, "90": 6, "91": 20, "92": 6, "93": 1, "94": 2, "95": 2,
    "98": 4, "212": 3, "213": 2, "216": 2, "218": 1, "220": 1, "221": 1, "225": 1,
    "233": 2, "234": 4, "237": 1, "243": 1, "244": 1, "251": 2, "254": 2, "255": 1,
    "256": 1, "260": 1, "263": 1, "351": 3, "352": 1, "353": 2, "354": 1, "355": 1,
    "356": 1, "357": 1, "358": 2, "359": 2, "370": 1, "371": 1, "372": 1, "373": 1,
    "374": 1, "375": 1, "380": 3, "381": 2, "382": 1, "385": 2, "386": 1, "387": 1,
    "389": 1, "420": 3, "421": 2, "423": 1, "852": 3, "853": 1, "855": 1, "856": 1,
    "880": 3, "886": 3, "960": 1, "961": 1, "962": 1, "963": 1, "964": 2, "965": 1,
    "966": 3, "967": 1, "968": 1, "970": 1, "971": 4, "972": 3, "973": 1, "974": 1,
    "975": 1, "976": 1, "977": 1, "992": 1, "993": 1, "994": 1, "995": 1, "996": 1,
    "998": 2,
}
# How many digits a prefix adds to its country code (weights for 0, 1, 2, ... extra).
EXTRA_WEIGHTS = [1, 3, 6, 10, 14, 14, 12, 9, 6, 4, 2, 1, 1, 1]


def tariff_definition(deck: Deck) -> TariffDefinition:
    return TariffDefinition(
        name="bench", currency="EUR", timezone="Europe/Zurich",
        numbering=Numbering(international_prefix="00", national_prefix="0", country_code="41"),
        default_band="offpeak",
        bands=(BandRule.from_dict({"band": "peak", "days": "mon-fri", "from": "08:00",
                                   "to": "19:00"}),
               BandRule.from_dict({"band": "weekend", "days": "sat-sun"})),
        holiday_band="weekend",
        holidays=tuple(Holiday.from_dict({"day": d}) for d in
                       ("2026-12-24", "2026-12-25", "2026-12-26", "2027-01-01")),
        decks=(deck,))


def synthetic_deck(size: int, seed: int = SEED) -> Deck:
    """`size` distinct prefixes, columnar, deterministic for a given seed."""
    rng = random.Random(seed)
    codes = list(COUNTRIES)
    weights = [COUNTRIES[c] for c in codes]
    seen: set[str] = set()
    keys, dest, price, fee, minimum, inc1, inc2 = (array("q") for _ in range(7))
    offpeak, weekend = array("q"), array("q")
    increments = [(60, 60), (30, 6), (1, 1)]
    extras = list(range(len(EXTRA_WEIGHTS)))
    while len(keys) < size:
        for cc in rng.choices(codes, weights, k=min(4096, size - len(keys))):
            extra = rng.choices(extras, EXTRA_WEIGHTS)[0]
            extra = min(extra, 15 - len(cc))
            prefix = cc + "".join(rng.choice("0123456789") for _ in range(extra))
            if prefix in seen:
                continue
            seen.add(prefix)
            keys.append((int(prefix) << 4) | len(prefix))
            dest.append(codes.index(cc))
            p = rng.randrange(5_000, 900_000, 100)
            price.append(p)
            offpeak.append(p * 7 // 10)
            weekend.append(p // 2)
            fee.append(rng.choice((0, 0, 0, 10_000, 50_000)))
            minimum.append(rng.choice((0, 0, 0, 30, 60)))
            a, b = rng.choice(increments)
            inc1.append(a)
            inc2.append(b)
    return Deck.from_columns(name="base", keys=keys, dest=dest, destinations=list(codes),
                             price=price, fee=fee, minimum=minimum, increment=inc1,
                             next_increment=inc2,
                             band_prices={"offpeak": offpeak, "weekend": weekend})


def synthetic_calls(deck: Deck, count: int, mix: str = "uniform", seed: int = SEED + 1):
    """(packed numbers, starts, durations) of `count` calls to numbers under the deck.

    Countries are drawn by traffic weight; within a country the prefix is drawn
    uniformly (`mix="uniform"`: every prefix as likely, the worst case for
    caches) or by a Zipf law over a fixed shuffled ranking of the country's
    prefixes (`mix="zipf"`: a few destinations carry most calls, as in real
    traffic).
    """
    from itertools import accumulate

    from ocs.rating import pack_numbers
    rng = random.Random(seed)
    by_country: dict[int, list[str]] = {}
    for k, c in zip(deck.keys, deck.dest):
        by_country.setdefault(c, []).append(f"{k >> 4:0{k & 15}d}")
    countries = sorted(by_country)
    weights = [COUNTRIES[deck.destinations[c]] for c in countries]
    ranks: dict[int, list[float]] = {}
    if mix == "zipf":
        for c in countries:
            rng.shuffle(by_country[c])
            ranks[c] = list(accumulate(1 / r for r in range(1, len(by_country[c]) + 1)))
    numbers, starts, durations = [], array("q"), array("q")
    digits = "0123456789"
    for c in rng.choices(countries, weights, k=count):
        if mix == "zipf":
            prefix = rng.choices(by_country[c], cum_weights=ranks[c])[0]
        else:
            prefix = rng.choice(by_country[c])
        length = max(len(prefix) + rng.randint(0, 3), min(15, rng.randint(10, 12)))
        number = prefix + "".join(rng.choice(digits) for _ in range(min(15, length) - len(prefix)))
        roll = rng.random()
        if roll < 0.02:
            number = "999" + number[3:]           # no such country code: no route
        elif roll < 0.15:
            number = "+" + number
        elif roll < 0.25:
            number = "00" + number
        elif roll < 0.30 and number.startswith("41"):
            number = "0" + number[2:]
        numbers.append(number)
        starts.append(START + rng.randrange(MONTH_US))
        r = rng.random()
        durations.append(0 if r < 0.03 else rng.randint(1, 300) if r < 0.9
                         else rng.randint(300, 3600))
    return pack_numbers(numbers), starts, durations


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(size: int, engine: str, calls: int, repeat: int) -> dict:
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    deck = synthetic_deck(size)
    definition = tariff_definition(deck)
    rss_deck = rss_mb()
    t0 = time.perf_counter()
    tariff = compile(definition, engine=engine)
    compile_s = time.perf_counter() - t0
    rss_compiled = rss_mb()
    out = {"engine": engine, "prefixes": len(deck), "calls": calls,
           "compile_s": round(compile_s, 3), "rss_deck_mb": round(rss_deck, 1),
           "rss_after_compile_mb": round(rss_compiled, 1),
           "compile_rss_growth_mb": round(rss_compiled - rss_deck, 1),
           "engine_index_mb": round(tariff.engine.nbytes() / 2**20, 1)}
    for mix in ("uniform", "zipf") if engine == "compiled" else ("uniform",):
        numbers, starts, durations = synthetic_calls(deck, calls, mix)
        runs = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            result = tariff.rate_batch("voice", numbers, starts, durations)
            runs.append(time.perf_counter() - t0)
        wall = statistics.median(runs)
        suffix = "" if mix == "uniform" else "_zipf"
        out[f"calls_per_s{suffix}"] = round(calls / wall)
        out[f"ns_per_call{suffix}"] = round(wall / calls * 1e9, 1)
        out[f"runs_s{suffix}"] = [round(r, 4) for r in runs]
        out[f"rated_ok{suffix}"] = result.ok
        del numbers, starts, durations, result
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def run_child(size: int, engine: str, calls: int, repeat: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.rating", "--child", str(size),
                          "--engine", engine, "--calls", str(calls), "--repeat", str(repeat)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=1_000_000)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--twin-calls", type=int, default=20_000)
    ap.add_argument("--twin-sizes", default="10000,100000")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--engine", default="compiled", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.engine, args.calls, args.repeat)))
        return
    sizes = [int(s) for s in args.sizes.split(",") if s]
    twin_sizes = [int(s) for s in args.twin_sizes.split(",") if s]
    t0 = time.perf_counter()
    report = {"bench": "rating", "seed": SEED, "sizes": {}}
    for size in sizes:
        entry = {"compiled": run_child(size, "compiled", args.calls, args.repeat)}
        if size in twin_sizes:
            entry["pure"] = run_child(size, "pure", args.twin_calls, 3)
            entry["speedup"] = round(entry["compiled"]["calls_per_s"]
                                     / entry["pure"]["calls_per_s"], 1)
        report["sizes"][str(size)] = entry
    base = report["sizes"].get("100000", {}).get("compiled")
    big = report["sizes"].get("1000000", {}).get("compiled")
    report["targets"] = {
        "compiled_calls_per_s_100k >= 2e6": base and base["calls_per_s"] >= 2_000_000,
        "speedup_100k >= 30": report["sizes"].get("100000", {}).get("speedup", 0) >= 30,
        "compile_1m_s < 3": big and big["compile_s"] < 3,
        "rss_1m_mb < 200": big and big["rss_after_compile_mb"] < 200,
        "throughput_1m_within_20pct": bool(base and big
                                           and big["calls_per_s"] >= 0.8 * base["calls_per_s"]),
        "throughput_1m_within_20pct_zipf": bool(
            base and big and big["calls_per_s_zipf"] >= 0.8 * base["calls_per_s_zipf"]),
    }
    if base and big:
        report["ratio_1m_to_100k"] = {
            "uniform": round(big["calls_per_s"] / base["calls_per_s"], 2),
            "zipf": round(big["calls_per_s_zipf"] / base["calls_per_s_zipf"], 2)}
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
