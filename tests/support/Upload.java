// Uploads files the way the EdgeGallery back ends do, through RestTemplate's default request
// factory: plain java.net.HttpURLConnection in fixed-length streaming mode, a multipart body
// with the text fields first and the file part last, the whole body written before the answer
// is read. Several uploads run one after the other in this JVM (so kept-alive connections are
// reused, as in a long-running back end).
//
// Usage: java Upload.java URL UPLOAD...
//   UPLOAD = PATH;FILENAME[;NAME=VALUE]...  the file at PATH, sent as FILENAME, after the fields
// Prints one line per upload: the status code, a space, the response body. On an IOException
// prints it and exits 3.
import java.io.*;
import java.net.HttpURLConnection;
import java.net.URL;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;

public class Upload {
    static final String CRLF = "\r\n";

    public static void main(String[] args) throws Exception {
        for (int i = 1; i < args.length; i++) {
            String[] spec = args[i].split(";");
            List<String[]> fields = new ArrayList<>();
            for (int f = 2; f < spec.length; f++) fields.add(spec[f].split("=", 2));
            try {
                System.out.println(upload(args[0], new File(spec[0]), spec[1], fields));
            } catch (IOException e) {
                System.out.println("IOException: " + e);
                System.exit(3);
            }
        }
    }

    static String upload(String url, File file, String fileName, List<String[]> fields) throws IOException {
        String boundary = "----RestTemplateBoundary" + Long.toHexString(System.nanoTime());
        ByteArrayOutputStream head = new ByteArrayOutputStream();
        for (String[] f : fields) {
            byte[] value = f[1].getBytes(StandardCharsets.UTF_8);
            write(head, "--" + boundary + CRLF
                    + "Content-Disposition: form-data; name=\"" + f[0] + "\"" + CRLF
                    + "Content-Type: text/plain;charset=UTF-8" + CRLF
                    + "Content-Length: " + value.length + CRLF + CRLF);
            head.write(value);
            write(head, CRLF);
        }
        write(head, "--" + boundary + CRLF
                + "Content-Disposition: form-data; name=\"file\"; filename=\"" + fileName + "\"" + CRLF
                + "Content-Type: application/octet-stream" + CRLF
                + "Content-Length: " + file.length() + CRLF + CRLF);
        byte[] tail = (CRLF + "--" + boundary + "--" + CRLF).getBytes(StandardCharsets.UTF_8);

        HttpURLConnection conn = (HttpURLConnection) new URL(url).openConnection();
        conn.setDoOutput(true);
        conn.setDoInput(true);
        conn.setRequestMethod("POST");
        conn.setRequestProperty("Content-Type", "multipart/form-data;boundary=" + boundary);
        conn.setFixedLengthStreamingMode(head.size() + file.length() + tail.length);
        conn.connect();
        try (OutputStream out = conn.getOutputStream(); InputStream in = new FileInputStream(file)) {
            head.writeTo(out);
            byte[] buf = new byte[64 * 1024];
            int n;
            while ((n = in.read(buf)) > 0) out.write(buf, 0, n);
            out.write(tail);
        }
        int status = conn.getResponseCode();
        InputStream body = status >= 400 ? conn.getErrorStream() : conn.getInputStream();
        String text = body == null ? "" : new String(body.readAllBytes(), StandardCharsets.UTF_8);
        if (body != null) body.close();
        return status + " " + text;
    }

    static void write(OutputStream out, String s) throws IOException {
        out.write(s.getBytes(StandardCharsets.UTF_8));
    }
}
