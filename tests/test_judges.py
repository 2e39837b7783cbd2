"""The gold judge: VADER's compound score, 0 for empty text, signed the way a reader would."""

import numpy as np

from rlhf_jax import judges


def test_vader_scores_empty_text_0_and_clear_cases_by_their_sign():
  scores = judges.get_judge("vader")(["", "   ", "The film was wonderful, a great and moving story.",
                                      "The food was awful and the staff were rude. Terrible.",
                                      "The hotel is on a street."])
  assert scores.dtype == np.float32 and scores.shape == (5,)
  assert scores[0] == 0.0 and scores[1] == 0.0
  assert scores[2] > 0.5 and scores[3] < -0.5 and scores[4] == 0.0
  assert np.all(np.abs(scores) <= 1.0)
