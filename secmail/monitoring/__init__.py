"""
What the gateway tells its monitoring: Prometheus metrics (L{secmail.monitoring.metrics}), the
health answers (L{secmail.monitoring.health}) and the listener that serves both
(L{secmail.monitoring.http}).
"""
