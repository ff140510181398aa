"""Sample data sets and models, built at set-up from data shipped inside scikit-learn."""
