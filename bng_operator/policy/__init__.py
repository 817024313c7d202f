"""Policy, pure: policy objects -> what a node (and later a session) gets.

Imported by both the operator (which renders BNGNode specs and carves pools into blocks) and
the agent (which renders a node whose spec embeds no policy, and reports block usage). It
imports neither of them.
"""
