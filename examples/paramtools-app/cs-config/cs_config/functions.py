"""A small, real model: a flat tax with an exemption on a synthetic population.

It follows the Compute Studio contract: ParamTools inputs in; a table, a
picture and a CSV out.
"""

import base64
import struct
import zlib

import numpy as np
import paramtools

YEARS = [2025, 2026, 2027]


class MetaParams(paramtools.Parameters):
    array_first = True
    defaults = {
        "year": {
            "title": "Year",
            "description": "Year of the simulation.",
            "type": "int",
            "value": 2026,
            "validators": {"choice": {"choices": YEARS}},
        },
        "use_full_sample": {
            "title": "Use full sample",
            "description": "Simulate 10,000 households instead of 1,000.",
            "type": "bool",
            "value": True,
            "validators": {"choice": {"choices": [True, False]}},
        },
    }


class Policy(paramtools.Parameters):
    array_first = True
    defaults = {
        "schema": {
            "labels": {"year": {"type": "int", "validators": {"choice": {"choices": YEARS}}}},
        },
        "tax_rate": {
            "title": "Tax rate",
            "description": "Flat rate on income above the exemption.",
            "type": "float",
            "value": [{"year": y, "value": 0.2} for y in YEARS],
            "validators": {"range": {"min": 0, "max": 1}},
        },
        "exemption": {
            "title": "Exemption",
            "description": "Income exempt from the tax, in dollars.",
            "type": "float",
            "value": [{"year": y, "value": 10000.0} for y in YEARS],
            "validators": {"range": {"min": 0, "max": 1000000}},
        },
    }


def get_version():
    return "1.0.0"


def get_inputs(meta_param_dict):
    meta = MetaParams()
    meta.adjust(meta_param_dict)
    policy = Policy()
    return {
        "meta_parameters": meta.dump(),
        "model_parameters": {"policy": policy.dump()},
    }


def validate_inputs(meta_param_dict, adjustment, errors_warnings):
    policy = Policy()
    policy.adjust(adjustment.get("policy", {}), raise_errors=False)
    errors_warnings["policy"]["errors"].update(policy.errors)
    return {"errors_warnings": errors_warnings}


def population(full_sample):
    rng = np.random.default_rng(2026)
    size = 10000 if full_sample else 1000
    return rng.lognormal(mean=10.8, sigma=0.7, size=size)


def run_model(meta_param_dict, adjustment):
    meta = MetaParams()
    meta.adjust(meta_param_dict)
    policy = Policy()
    policy.adjust(adjustment.get("policy", {}))
    policy.set_state(year=meta.year)
    rate, exemption = float(policy.tax_rate[0]), float(policy.exemption[0])
    income = population(meta.use_full_sample)
    tax = np.maximum(income - exemption, 0) * rate
    edges = np.quantile(income, np.linspace(0, 1, 6))
    rows = []
    for i in range(5):
        inside = (income >= edges[i]) & (income <= edges[i + 1])
        rows.append((i + 1, float(income[inside].mean()), float(tax[inside].mean())))
    return {
        "renderable": [
            {
                "media_type": "table",
                "title": "Average tax by income quintile",
                "data": html_table(rows),
            },
            {
                "media_type": "PNG",
                "title": "Average tax by quintile",
                "data": bar_chart([r[2] for r in rows]),
            },
        ],
        "downloadable": [
            {"media_type": "CSV", "title": "tax_by_quintile", "data": csv_table(rows)},
        ],
    }


def html_table(rows):
    body = "".join(
        f"<tr><td>{q}</td><td>{inc:,.0f}</td><td>{tax:,.0f}</td></tr>" for q, inc, tax in rows
    )
    return (
        "<table><tr><th>Quintile</th><th>Average income</th><th>Average tax</th></tr>"
        f"{body}</table>"
    )


def csv_table(rows):
    return "quintile,average_income,average_tax\n" + "".join(
        f"{q},{inc:.2f},{tax:.2f}\n" for q, inc, tax in rows
    )


def bar_chart(values, width=250, height=160):
    """A PNG bar chart written with zlib alone, base64-encoded as the web app expects."""
    top = max(values) or 1.0
    bar = width // len(values)
    pixels = []
    for y in range(height):
        row = bytearray([0])
        for x in range(width):
            index = min(x // bar, len(values) - 1)
            filled = height - y <= values[index] / top * (height - 10) and x % bar > 4
            row += bytes((40, 90, 160) if filled else (255, 255, 255))
        pixels.append(bytes(row))

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(pixels)))
        + chunk(b"IEND", b"")
    )
    return base64.b64encode(png).decode()
