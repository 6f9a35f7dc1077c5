// The console's reading of Content-Disposition (web/api.js dispositionFilename), in Node:
// the names the service sends, and the forms RFC 6266 allows, give the whole file name.
//
// node disposition.mjs

import { dispositionFilename } from '../../web/api.js';

const cases = [
  // A `;` inside the quoted filename is part of the name.
  ['attachment; filename="semi;colon.img"', 'semi;colon.img'],
  // The exact name in filename* (UTF-8, percent-encoded) wins over the fallback.
  [`attachment; filename="a_b.img"; filename*=UTF-8''a%22b.img`, 'a"b.img'],
  [`attachment; filename="100_.img"; filename*=UTF-8''100%25.img`, '100%.img'],
  [`attachment; filename="__.img"; filename*=UTF-8''%E9%95%9C.img`, '\u955c.img'],
  // Quoted-string escapes, a token, any case of the parameter name.
  ['attachment; filename="x\\"y.img"', 'x"y.img'],
  ['attachment; filename=plain.img', 'plain.img'],
  ['attachment; FILENAME="up.img"', 'up.img'],
  // A broken escape in filename*: the plain filename; a plain filename is never decoded.
  [`attachment; filename="f.img"; filename*=UTF-8''%ZZ.img`, 'f.img'],
  ['attachment; filename="%41.img"', '%41.img'],
  // A filename= inside a quoted value is no parameter.
  ['attachment; filename="a; filename=b.img"', 'a; filename=b.img'],
  ['attachment', null],
];
let failed = 0;
for (const [value, want] of cases) {
  const got = dispositionFilename(value);
  if (got !== want) {
    failed += 1;
    console.error(`${value}: got ${JSON.stringify(got)}, want ${JSON.stringify(want)}`);
  }
}
console.log(`${cases.length - failed} of ${cases.length} Content-Disposition values read right`);
process.exit(failed ? 1 : 0);
