"""Helpdesk: a stateful order/ticket system (see env.py)."""
