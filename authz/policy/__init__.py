"""The policy: its model, how a file becomes one, and how a call is judged against it."""
