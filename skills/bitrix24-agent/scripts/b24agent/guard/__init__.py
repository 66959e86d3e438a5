"""What may run, and proof of what ran: the guarded call path (``pipeline``), packs and gates
(``policy``), signed plans, idempotency records, safe writes and their reconciliation, and the
hash-chained audit log. It sits between the front ends (``cli``) and the REST stack (``rest``).
"""
