// Sending a file from a room: checked against the room's limit, uploaded with progress,
// then posted as the kind the box's sniffed type says (image, video, voice or file).

import { API_HEADERS, ApiError, formatSize as sizeText, tr } from "./common.js";
import { enc, errorText } from "./chat-page.js";

/** The images an image message may carry (appliance.security.untrusted.RASTER_IMAGE_TYPES). */
const RASTER_IMAGES = ["image/png", "image/jpeg", "image/gif", "image/webp"];

function uploadFile(file, uploadStatus) {
  // XMLHttpRequest, not fetch: only it reports upload progress.
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/api/v1/uploads?name=${enc(file.name || "file")}`);
    for (const [name, value] of Object.entries(API_HEADERS)) xhr.setRequestHeader(name, value);
    xhr.setRequestHeader("Content-Type", file.type || "application/octet-stream");
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) {
        const percent = Math.floor((event.loaded / event.total) * 100);
        uploadStatus.textContent = tr(`กำลังอัปโหลด ${file.name} ${percent}%`, `Uploading ${file.name}: ${percent}%`);
      }
    });
    xhr.addEventListener("load", () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status === 201) resolve(body); else reject(new ApiError(xhr.status, body));
    });
    xhr.addEventListener("error", () => reject(new TypeError("network")));
    xhr.send(file);
  });
}

/** The composer's attach button: the chosen file is uploaded and sent through *composer*. */
export function bindUploads(room, composer) {
  const { form } = room;
  const uploadStatus = form.querySelector(".upload-status");

  async function sendFile(file) {
    room.showError("");
    if (file.size > room.maxBytes) {
      room.showError(tr(`ไฟล์ ${file.name} มีขนาด ${sizeText(file.size)} เกินขีดจำกัด ${sizeText(room.maxBytes)}`,
        `${file.name} is ${sizeText(file.size)}, over the ${sizeText(room.maxBytes)} limit`));
      return;
    }
    if (file.size === 0) {
      room.showError(tr("ไฟล์ว่างเปล่า", "The file is empty"));
      return;
    }
    uploadStatus.textContent = tr(`กำลังอัปโหลด ${file.name} 0%`, `Uploading ${file.name}: 0%`);
    try {
      const upload = await uploadFile(file, uploadStatus);
      // The box's type, not the browser's guess: it is the bytes' own type when they
      // are a picture or sound, and an SVG is never shown as a picture (it is a file).
      const type = String(upload.media_type ?? "");
      const kind = RASTER_IMAGES.includes(type) ? "image" : type.startsWith("video/") ? "video"
        : type.startsWith("audio/") ? "voice" : "file";
      uploadStatus.textContent = tr("อัปโหลดแล้ว กำลังส่ง…", "Uploaded; sending…");
      const caption = composer.caption();
      if (await composer.send({ kind, upload_id: upload.upload_id, ...(caption ? { text: caption } : {}) }) && caption) composer.clearCaption();
      uploadStatus.textContent = "";
    } catch (error) {
      uploadStatus.textContent = "";
      room.showError(errorText(error));
    }
  }

  const fileInput = form.querySelector(".file-input");
  form.querySelector('[data-action="attach"]').addEventListener("click", () => fileInput.click());
  fileInput.addEventListener("change", () => {
    const file = fileInput.files?.[0];
    fileInput.value = "";
    if (file) sendFile(file);
  });
}
