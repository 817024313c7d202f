"""Subscriber sessions: the unit the agent manages, their events and the two-phase decision.

See session.py for the state machine, events.py for how features follow sessions, and
authorise.py for the decision's optional second phase.
"""
