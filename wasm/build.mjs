console.log("wasm: skipped")
