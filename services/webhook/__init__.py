"""The GitHub webhook receiver: signed deliveries in, `cs.publish.requested` events out.

It only decides *what* to publish and says so with a Prefect event; the publish
deployment's trigger (deployments/triggers.py) starts the run. One module per
concern, in the order a delivery meets them:

- signature.py  the HMAC GitHub signs with, checked on the bytes before anything is parsed;
- keys.py       which model a repository is, and which key must have signed for it;
- planner.py    what one event asks for (publish requests), reading GitHub where needed;
- policy.py     what is refused even when signed (bad tags, the hourly budget, older tags);
- deliveries.py at-most-once, per delivery id and per signed body, in SQLite under CS_HOME;
- app.py        the Starlette app (`prefect-cs webhook serve`) that runs them in order.

Order of checks, cheapest and safest first: body size (413), a well-formed
signature header (401), the signature itself against the bytes (401, nothing
else happens: the body is not parsed), headers and JSON (400, as is a body
that is not an object or nested past CS_LIMITS_JSON_DEPTH), whether the key
that signed is the one the payload's repository needs (401), then the event's
meaning (202 with a reason when it asks for nothing), then at-most-once.
"""
