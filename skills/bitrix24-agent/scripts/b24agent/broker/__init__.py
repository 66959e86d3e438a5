"""The broker: a service under the operator's account that holds what the agent must not.

In plain CLI mode the agent runs as the operator's user: it can read ``.env``, the plan-signing
key and the audit log, so the guards stop accidents, not a determined process. The broker moves
all of it out of the agent's reach. ``b24-broker serve`` (``service.py``) runs as the operator,
with the credentials, token store, plan key, idempotency records, audit log and policy read from
its own configuration. An agent with ``B24_BROKER=unix:PATH`` holds no secret: ``b24`` sends its
arguments and stdio over the socket (``cli/warm/brokered.py``) and the broker runs the call
through the same pipeline under its own settings (``calls.py``), whatever the caller's
environment says. The socket's group decides who may connect; the caller's uid (SO_PEERCRED)
is in each audit line. Above ``B24_APPROVAL`` a plan runs only after a person approves it over
the second, admin socket (``admin.py``; ``b24-broker approve``), whose group the agent is not in.
The audit chain is keyed with a key only the broker reads (guard/auditchain.py).
"""
