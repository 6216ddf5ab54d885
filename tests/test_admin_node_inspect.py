"""The console's rendering of Etsy's ``counters``/``gauges``/``timers`` is compared with Node's
own ``util.inspect`` (Etsy statsd runs on Node): random objects of the shapes those commands
hold, one ``node`` process for the whole batch."""

from __future__ import annotations

import json
import random
import shutil
import subprocess

import pytest

from pystatsd.node_inspect import inspect, js_number

NAMES = ["a", "api.hits", "x_y", "statsd.bad_lines_seen", "it's", "q\"'`", "tab\there",
         "lat;env=stage;dc=eu1", "9lives", "_ok1", "ünï", "ctl\x01\x7f"]
SPECIAL_NUMBERS = [1e21, 1.5e-7, 1e-6, 123456789012345680000.0, 0.1, 2.5e300, 1e16, 5e-324,
                   -0.5, 100.0, 1234.5678]
NODE_RENDER = """
const util = require('util');
const cases = JSON.parse(require('fs').readFileSync(0, 'utf8'));
for (const c of cases) process.stdout.write(JSON.stringify(util.inspect(c)) + '\\n');
"""


def _number(rng: random.Random) -> float:
    pick = rng.random()
    if pick < 0.3:
        return rng.randint(0, 1000)
    if pick < 0.5:
        return rng.randint(-10**6, 10**9)
    if pick < 0.7:
        return round(rng.uniform(-100, 100), rng.randint(0, 6))
    if pick < 0.85:
        return rng.choice(SPECIAL_NUMBERS)
    return rng.uniform(0, 1e6)


def _objects(seed: int, count: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    objects = []
    for _ in range(count):
        obj: dict[str, object] = {}
        for _ in range(rng.randint(0, 12)):
            name = rng.choice(NAMES) + str(rng.randint(0, 50))
            shape = rng.random()
            if shape < 0.5:
                obj[name] = _number(rng)
            elif shape < 0.85:
                size = rng.choice([0, 1, 3, 6, 7, 10, 20, 50, 99, 100, 101, 150])
                obj[name] = [_number(rng) for _ in range(size)]
            else:
                obj[name] = [rng.choice(["a", "bb", "c'd", f"member-{rng.randint(0, 999)}"])
                             for _ in range(rng.randint(0, 30))]
        objects.append(obj)
    return objects


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_rendering_matches_nodes_util_inspect() -> None:
    objects = _objects(seed=12, count=400)
    result = subprocess.run(["node", "-e", NODE_RENDER], input=json.dumps(objects),
                            capture_output=True, text=True, timeout=60, check=True)
    expected = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(expected) == len(objects)
    for obj, node_says in zip(objects, expected, strict=True):
        assert inspect(obj) == node_says, obj


@pytest.mark.parametrize(("value", "text"), [
    (3.0, "3"), (-0.0, "-0"), (0.1, "0.1"), (1e21, "1e+21"), (1e20, "100000000000000000000"),
    (1.5e-7, "1.5e-7"), (1e-6, "0.000001"), (float("nan"), "NaN"), (float("inf"), "Infinity"),
    (123.456, "123.456"), (2.5e300, "2.5e+300"),
])
def test_numbers_print_as_javascript_prints_them(value: float, text: str) -> None:
    assert js_number(value) == text
