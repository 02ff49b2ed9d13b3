import replay.evaluate as ev
ev.heapq = type("H", (), {"heappush": staticmethod(lambda *a: None), "heappop": staticmethod(lambda h: h.pop(0))})
from tests.replay.test_evaluate import *  # noqa
