"""The released Cheers checkpoint (`ai9stars/Cheers`, github.com/AI9Stars/Cheers) in this package's terms.

`config`: the release's `config.json` → `CheersConfig` with every official-vs-native difference set to the released
value (R14). `names`: the release's tensor names ↔ ours, with the tensor transforms between them (FLUX naming →
diffusers `AutoencoderKLFlux2`, 1×1 convs → linears, the (kh, kw, c) ↔ (c, kh, kw) channel order of the 2×2
(un)shuffles). `conversion`: plans, checks and converts a whole checkpoint, both ways. The `convert-official` command
(`cheers_pl.convert`) writes the result as an exported pipeline directory.
"""
