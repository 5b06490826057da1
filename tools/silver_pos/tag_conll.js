// Silver Penn-Treebank part-of-speech tags for a CoNLL file (one token per line, blank line between
// sentences), written as `token<TAB>POS<TAB>original last column`.
//
// Why: benchmarks/nlp_aux.py's POS -> NER experiment needs POS labels on English tweets, and
// ../shared has none (WNUT-17 carries entity tags only). wink-pos-tagger (MIT, lexicon + rules,
// ~93% on WSJ by its authors' figure) tags the given tokens as they are, so the words and sentence
// boundaries stay those of the input file. The tags are a tagger's output, not gold: say so when
// quoting results.
//
//   cd tools/silver_pos && npm install && node tag_conll.js IN.conll OUT.conll
"use strict";
const fs = require("fs");
const tagger = require("wink-pos-tagger")();

const [input, output] = process.argv.slice(2);
if (!input || !output) {
  console.error("usage: node tag_conll.js IN.conll OUT.conll");
  process.exit(2);
}
const out = [];
let tokens = [];
let rest = [];
let sentences = 0;
// wink tags some punctuation runs and emoticons with the token itself (":)", "!!"): outside the
// Penn tag set, so they become SYM (one class for the head, not one per spelling).
const PUNCTUATION = new Set([".", ",", ":", "``", "''", '"', "-LRB-", "-RRB-", "#", "$"]);
const penn = (tag) => (/^[A-Z]+\$?$/.test(tag) || PUNCTUATION.has(tag) ? tag : "SYM");
const flush = () => {
  if (tokens.length === 0) return;
  const tagged = tagger.tagRawTokens(tokens);
  if (tagged.length !== tokens.length) throw new Error(`sentence ${sentences + 1}: ${tokens.length} tokens, ${tagged.length} tags`);
  tagged.forEach((t, i) => out.push(`${tokens[i]}\t${penn(t.pos)}\t${rest[i]}`));
  out.push("");
  sentences += 1;
  tokens = [];
  rest = [];
};
for (const line of fs.readFileSync(input, "utf8").split(/\r?\n/)) {
  if (!line.trim()) { flush(); continue; }
  const columns = line.includes("\t") ? line.split("\t") : line.split(/\s+/);
  tokens.push(columns[0]);
  rest.push(columns[columns.length - 1]);
}
flush();
fs.writeFileSync(output, out.join("\n") + "\n");
console.log(`${input}: ${sentences} sentences tagged -> ${output}`);
