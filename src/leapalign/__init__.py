"""leapalign: reward-gradient post-training of flow matching text-to-image models.

Conventions (one, everywhere): sigma = 1 is pure noise, sigma = 0 is data;
x_s = (1 - s) x0 + s eps, v = eps - x0, Euler step x_{s'} = x_s + (s' - s) v.
"""

__version__ = "0.1.0"
