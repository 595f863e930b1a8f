/** A small English corpus for the end-to-end tests: 12 documents of repeated sentences in a folder. */
import * as fs from 'node:fs';
import * as path from 'node:path';

const SENTENCES = [
  'The whale rose slowly from the dark water and the crew fell silent.',
  'Congress shall assemble at least once in every year, said the president.',
  'She walked along the river in the morning light, counting the boats.',
  'A good harvest depends on rain, patience and a little luck.',
  'The captain wrote in his log that the wind had turned to the north.',
];

/** Write the corpus into `dir` (created) and return it. */
export function writeSmallCorpus(dir: string): string {
  fs.mkdirSync(dir, { recursive: true });
  for (let d = 0; d < 12; d++) {
    const lines: string[] = [];
    for (let i = 0; i < 60; i++) lines.push(SENTENCES[(d * 7 + i * 3) % SENTENCES.length]!);
    fs.writeFileSync(path.join(dir, `doc${String(d).padStart(2, '0')}.txt`), lines.join(' '));
  }
  return dir;
}
