"""The web view (/ui/) and the plots of tasks."""
