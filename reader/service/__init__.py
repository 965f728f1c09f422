"""Integration with the service manager (systemd): readiness, status and watchdog."""
