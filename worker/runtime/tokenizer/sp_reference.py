#!/usr/bin/python3
"""Reference encodings from the real SentencePiece library, for tokenizer_test.

Runs in its own process: Debian's libsentencepiece (python3-sentencepiece) carries its own
protobuf and cannot share a process with ours (PITFALLS 1). Use Debian's /usr/bin/python3.

usage: sp_reference.py MODEL INPUT OUTPUT [--lines] [--decode]
  MODEL   a SentencePiece tokenizer.model
  INPUT   the text, read as bytes (malformed UTF-8 is passed through as the library sees it)
  OUTPUT  written as decimal ids separated by spaces, one line:
          default: the whole INPUT encoded as one string (no BOS/EOS)
          --lines: one output line per input line ('\\n'-separated, '\\n' not included);
                   a literal '\\\\n' inside a line stands for a newline, '\\\\\\\\' for a backslash
          --decode: INPUT holds ids (one sequence per line); OUTPUT gets each decoded text on its
                   own line, newlines escaped as above
"""
import sys


def unescape(line: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(line):
        if line[i:i + 1] == b"\\" and i + 1 < len(line):
            nxt = line[i + 1:i + 2]
            out += b"\n" if nxt == b"n" else nxt
            i += 2
        else:
            out += line[i:i + 1]
            i += 1
    return bytes(out)


def main(argv):
    args = [a for a in argv[1:] if not a.startswith("--")]
    flags = {a for a in argv[1:] if a.startswith("--")}
    if len(args) != 3 or not flags <= {"--lines", "--decode"}:
        sys.stderr.write(__doc__)
        return 2
    import sentencepiece as spm
    model, inp, outp = args
    sp = spm.SentencePieceProcessor(model_file=model)
    with open(inp, "rb") as f:
        data = f.read()
    with open(outp, "w", encoding="utf-8", errors="surrogateescape") as f:
        if "--decode" in flags:
            for line in data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n"):
                ids = [int(t) for t in line.split()]
                text = sp.decode(ids)
                f.write(text.replace("\\", "\\\\").replace("\n", "\\n") + "\n")
        elif "--lines" in flags:
            lines = data.split(b"\n")
            if data.endswith(b"\n"):
                lines = lines[:-1]
            for line in lines:
                f.write(" ".join(map(str, sp.encode(unescape(line)))) + "\n")
        else:
            f.write(" ".join(map(str, sp.encode(data))) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
