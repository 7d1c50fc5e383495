"""Retraining from production traffic: traffic + feedback ► dataset ► train ► compile ► candidate."""
