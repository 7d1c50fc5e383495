"""The closed loop: labelled traffic ► dataset ► train ► compile ► candidate ► gates ► promote.

`retrain` builds a new version from production traffic; `demo` runs the whole story.
"""
