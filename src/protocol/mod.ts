/**
 * The tcp-mux protocol v1: constants, frame types and the codec. Dependency-free; runs in browsers and Deno.
 * @module
 */
export * from "./constants.ts";
export * from "./errors.ts";
export * from "./codec.ts";
