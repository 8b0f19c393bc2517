"""Evaluation: metrics, group and fairness tables, reports and plots of a split or a collection."""
