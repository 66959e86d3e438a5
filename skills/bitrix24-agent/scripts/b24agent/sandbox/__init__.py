"""A local Bitrix24 portal on 127.0.0.1 for tests, demos and agent rehearsal.

It imports nothing from the client side except ``b24agent.encoding``; the client never imports it.
"""
