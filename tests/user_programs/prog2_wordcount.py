"""Map-reduce word count with imap_unordered; initializer/initargs with maxtasksperchild;
a Pool as a context manager terminated during a long map."""
import collections
import os
import random
import sys
import time

from _mp import Pool

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
         "the", "a", "of", "and"]


def corpus(lines, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(lines)]


def count_words(line):
    return collections.Counter(line.split())


STOP = None


def init(stopwords):
    global STOP
    STOP = frozenset(stopwords)


def count_without_stopwords(lines):
    words = [w for line in lines for w in line.split() if w not in STOP]
    return os.getpid(), len(words)


class NoWords(Exception):
    def __init__(self, line_no):
        super().__init__(line_no)          # args must rebuild it: exceptions travel pickled
        self.line_no = line_no

    def __str__(self):
        return "line %d has no words" % self.line_no


def check(pair):
    n, line = pair
    if not line.split():
        raise NoWords(n)
    return len(line.split())


def slow(x):
    time.sleep(0.5)
    return x


if __name__ == "__main__":
    text = corpus(4000)
    with Pool(4) as pool:
        total = collections.Counter()
        for c in pool.imap_unordered(count_words, text, chunksize=50):
            total.update(c)
    print("words", sum(total.values()), "top", total.most_common(3))
    print("matches a local count", total == collections.Counter(w for line in text for w in line.split()))

    pool = Pool(2, initializer=init, initargs=(("the", "a", "of", "and"),), maxtasksperchild=2)
    blocks = [text[i:i + 400] for i in range(0, 4000, 400)]
    out = pool.map(count_without_stopwords, blocks, chunksize=1)
    pool.close()
    pool.join()
    pids = [pid for pid, _ in out]
    print("without stopwords", sum(n for _, n in out))
    print("no worker ran more than 2 tasks", max(collections.Counter(pids).values()) <= 2)
    print("at least 5 workers", len(set(pids)) >= 5)

    with Pool(2) as pool:
        try:
            pool.map(check, enumerate(text[:100] + [""] + text[100:200]))
        except NoWords as e:
            print("map raised NoWords", e.line_no, e)
        errors, results = [], []
        for i in range(4):
            pool.apply_async(check, ((i, text[i] if i != 2 else " "),), callback=results.append,
                             error_callback=errors.append)
        pool.close()
        pool.join()
        print("apply_async callbacks", len(results), [type(e).__name__ for e in errors])
    with Pool(2) as pool:
        it = pool.imap(check, enumerate(["a b", "", "c"]))
        seen = []
        for _ in range(3):
            try:
                seen.append(next(it))
            except NoWords as e:
                seen.append("NoWords(%d)" % e.line_no)
        print("imap goes on after an error", seen)

    started = time.monotonic()
    with Pool(2) as pool:
        result = pool.map_async(slow, range(200))
        time.sleep(1.5)
        pool.terminate()
        took = time.monotonic() - started
        print("ready after terminate", result.ready())
    print("terminate well before the map's end", took < 30)
    pool.join()
    from multiprocessing import active_children
    print("children left", len(active_children()))
    sys.stdout.flush()
