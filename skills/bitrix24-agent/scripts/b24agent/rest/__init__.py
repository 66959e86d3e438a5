"""Talking to the portal: the client (call, batch, call_many, iter_all) and what it stands on:
transport, auth (token store, single-flight refresh), limiter, retrying, batching and export.

Nothing here imports ``guard``, ``cli`` or ``worker``: the REST stack answers what the portal
said; deciding whether a call may run is the guard's job.
"""
