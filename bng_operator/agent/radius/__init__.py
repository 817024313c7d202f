"""RADIUS: authentication of new sessions (the session core's authoriser), per class."""
