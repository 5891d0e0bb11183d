"""The web console for approvers and operators (docs/console.md)."""
