"""The recommender: purchase history, candidate sources, learned rankers, the baselines they are\ncompared with, the basket-completion model, evaluation and training runs."""
